"""The gateway's configuration file (TOML). docs/configuration.md documents every field."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from veilgate.config import ConfigError, load_toml, read_key_file
from veilgate.config.keys import decode_key
from veilgate.config.toml import Section
from veilgate.credentials import IssuerPublicKey
from veilgate.monitor.logs import FORMATS, LEVELS
from veilgate.protocol.constants import UNDER_LOAD_INITS_PER_SECOND
from veilgate.transport.tls import pem_pin

DEFAULT_UDP_PORT = 51820
DEFAULT_TCP_PORT = 8443
DEFAULT_TLS_PORT = 443
DEFAULT_POOL_V4 = "10.201.0.0/16"
DEFAULT_POOL_V6 = "fd7a:201::/64"
DEFAULT_STATUS_SOCKET = "/run/veilgate/gateway.sock"
MAX_WORKERS = 64


@dataclass
class GatewayConfig:
    private_key: bytes
    issuer_public_keys: list[bytes]
    listen: str = "0.0.0.0"
    listen6: str | None = "::"
    udp_port: int = DEFAULT_UDP_PORT
    tcp_port: int = DEFAULT_TCP_PORT
    """The plain TCP carrier's port; 0: no plain TCP listener."""
    tls_port: int = DEFAULT_TLS_PORT
    tls_cert_file: Path | None = None
    """The TLS carrier's certificate (PEM); None: no TLS listener."""
    tls_key_file: Path | None = None
    tls_name: str = ""
    tls_pin: str = ""
    """SHA-256 of the certificate's SubjectPublicKeyInfo (hex): what clients pin."""
    cover_page: bytes | None = None
    """The page the TLS port serves to web clients; None: the built-in one."""
    tun_name: str = "vg0"
    mtu: int = 1420
    pool_v4: ipaddress.IPv4Network = field(default_factory=lambda: ipaddress.IPv4Network(DEFAULT_POOL_V4))
    pool_v6: ipaddress.IPv6Network | None = field(
        default_factory=lambda: ipaddress.IPv6Network(DEFAULT_POOL_V6)
    )
    dns: list[ipaddress.IPv4Address | ipaddress.IPv6Address] | None = None
    """DNS servers pushed to clients; None: the gateway's own tunnel addresses (a resolver runs there)."""
    routes: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=lambda: [ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0")]
    )
    lease: int = 3600
    client_to_client: bool = False
    nat: bool = True
    udp_offload: bool = True
    tun_offload: bool = True
    """The TUN opened with IFF_VNET_HDR: the compiled data path writes coalesced TCP packets."""
    obfuscation: bool = False
    tcp_shape_frames: int = 8
    """With obfuscation: how many first frames on a plain TCP connection are padded (0: none)."""
    tcp_shape_jitter: float = 0.0
    """With obfuscation: up to this many seconds of random delay before each of them."""
    nat_interface: str | None = None
    """None: the interface of the default route when the gateway starts."""
    max_skew: int = 120
    status_socket: Path = Path(DEFAULT_STATUS_SOCKET)
    log_level: str = "info"
    log_format: str = "text"
    metrics_listen: tuple[str, int] | None = None
    max_tcp_connections: int = 4096
    max_sessions_per_credential: int = 1
    cookie_threshold: int = UNDER_LOAD_INITS_PER_SECOND
    """Handshake initiations per second above which the gateway demands cookies (0: always)."""
    provider_url: str | None = None
    provider_fingerprint: str | None = None
    user: str = "veilgate"
    workers: int = 0
    """Worker processes (docs/scaling.md); 0: one per core."""
    source: Path | None = None
    """The file this configuration was read from (a reload reads it again)."""


def load_gateway_config(path: str | Path, private_key: bytes | None = None) -> GatewayConfig:
    """``private_key``: the key already in use (a reload; the key file is root's alone and read at
    start only)."""
    root = load_toml(path)
    gw = root.section("gateway", required=True)
    key_file = gw.path_value("private_key_file")
    if private_key is None:
        private_key = read_key_file(key_file, "gateway private key")
    pool_v4 = gw.network("pool_v4", 4, DEFAULT_POOL_V4)
    pool_v6_text = gw.optional_str("pool_v6")
    pool_v6 = None if pool_v6_text == "" else gw.network("pool_v6", 6, DEFAULT_POOL_V6)
    assert isinstance(pool_v4, ipaddress.IPv4Network)
    assert pool_v6 is None or isinstance(pool_v6, ipaddress.IPv6Network)
    if pool_v4.prefixlen > 30:
        raise gw.error("pool_v4", "a network of at least 4 addresses (prefix /30 or shorter)", str(pool_v4))
    cfg = GatewayConfig(
        source=root.path,
        private_key=private_key,
        issuer_public_keys=[],
        listen=gw.address("listen", 4, "0.0.0.0") or "0.0.0.0",
        listen6=gw.address("listen6", 6, "::", optional=True),
        udp_port=gw.port("udp_port", DEFAULT_UDP_PORT),
        tcp_port=gw.get_int("tcp_port", DEFAULT_TCP_PORT, low=0, high=65535),
        tls_port=gw.port("tls_port", DEFAULT_TLS_PORT),
        tun_name=gw.interface_name("tun_name", "vg0") or "vg0",
        mtu=gw.get_int("mtu", 1420, low=1280, high=9000),
        pool_v4=pool_v4,
        pool_v6=pool_v6,
        dns=gw.address_list("dns", []) if "dns" in gw.data else None,
        routes=gw.network_list("routes", ["0.0.0.0/0", "::/0"]),
        lease=gw.get_int("lease", 3600, low=60, high=7 * 86400),
        client_to_client=gw.get_bool("client_to_client", False),
        nat=gw.get_bool("nat", True),
        udp_offload=gw.get_bool("udp_offload", True),
        tun_offload=gw.get_bool("tun_offload", True),
        obfuscation=gw.get_bool("obfuscation", False),
        tcp_shape_frames=gw.get_int("tcp_shape_frames", 8, low=0, high=64),
        tcp_shape_jitter=gw.get_int("tcp_shape_jitter_ms", 0, low=0, high=100) / 1000,
        nat_interface=gw.interface_name("nat_interface"),
        status_socket=gw.path_value("status_socket", DEFAULT_STATUS_SOCKET),
        log_level=gw.choice("log_level", LEVELS, "info"),
        log_format=gw.choice("log_format", FORMATS, "text"),
        metrics_listen=gw.listen_address("metrics_listen"),
        max_tcp_connections=gw.get_int("max_tcp_connections", 4096, low=1, high=1_000_000),
        max_sessions_per_credential=gw.get_int("max_sessions_per_credential", 1, low=1, high=64),
        cookie_threshold=gw.get_int("cookie_threshold", UNDER_LOAD_INITS_PER_SECOND, low=0, high=100_000_000),
        user=gw.get_str("user", "veilgate", 'a system user name, or "root" to keep running as root'),
        workers=gw.get_int("workers", 0, low=0, high=MAX_WORKERS),
    )
    _tls(gw, cfg)
    gw.reject_unknown()

    cred = root.section("credentials", required=True)
    cfg.provider_url = cred.optional_str("provider_url")
    if cfg.provider_url:
        cfg.provider_fingerprint = cred.get_str(
            "provider_fingerprint",
            expected="the provider certificate's SHA-256 (from `veilgate provider init`)",
        )
    keys = cred.str_list("issuer_public_keys", [] if cfg.provider_url else None)
    if not keys and not cfg.provider_url:
        raise cred.error(
            "issuer_public_keys", "issuer public keys (`veilgate issuer init`), or provider_url", keys
        )
    for text in keys:
        try:
            raw = decode_key(text, "issuer public key")
            IssuerPublicKey.from_bytes(raw)  # refuses weak keys (small order, non-canonical)
        except ValueError as exc:
            raise cred.error(
                "issuer_public_keys", f"base64 issuer public keys of 32 bytes ({exc})", text
            ) from exc
        cfg.issuer_public_keys.append(raw)
    cfg.max_skew = cred.get_int("max_skew", 120, low=0, high=3600)
    cred.reject_unknown()
    root.reject_unknown()
    return cfg


def _tls(gw: Section, cfg: GatewayConfig) -> None:
    """The TLS carrier's fields: all of tls_cert_file, tls_key_file and tls_name, or none."""
    given = [k for k in ("tls_cert_file", "tls_key_file", "tls_name") if k in gw.data]
    if given and len(given) < 3:
        missing = next(k for k in ("tls_cert_file", "tls_key_file", "tls_name") if k not in given)
        raise gw.error(
            missing, "tls_cert_file, tls_key_file and tls_name together (`veilgate tls-cert` makes them)"
        )
    if "cover_page" in gw.data:
        page = gw.path_value("cover_page")
        try:
            cfg.cover_page = page.read_bytes()
        except OSError as exc:
            raise gw.error("cover_page", f"a readable HTML file ({exc.strerror})", str(page)) from None
    if not given:
        return
    cfg.tls_name = gw.get_str("tls_name", expected="the DNS name the TLS certificate is for")
    if not _DNS_NAME.match(cfg.tls_name):
        raise gw.error("tls_name", "a DNS name such as www.example.org", cfg.tls_name)
    cfg.tls_cert_file = gw.path_value("tls_cert_file")
    cfg.tls_key_file = gw.path_value("tls_key_file")
    try:
        cfg.tls_pin = pem_pin(cfg.tls_cert_file.read_bytes())
    except OSError as exc:
        raise gw.error(
            "tls_cert_file", f"a readable PEM certificate ({exc.strerror})", str(cfg.tls_cert_file)
        ) from None
    except ValueError:
        raise gw.error(
            "tls_cert_file", "a PEM certificate (`veilgate tls-cert` makes one)", str(cfg.tls_cert_file)
        ) from None
    if not cfg.tls_key_file.is_file():
        raise gw.error("tls_key_file", "a readable PEM private key", str(cfg.tls_key_file))


_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)


__all__ = ["ConfigError", "GatewayConfig", "load_gateway_config"]
