"""The client's configuration file (TOML). docs/configuration.md documents every field."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veilgate.config import load_toml, read_key_file
from veilgate.config.keys import decode_key
from veilgate.config.toml import Section
from veilgate.monitor.logs import FORMATS, LEVELS
from veilgate.protocol.constants import REKEY_AFTER_TIME

DEFAULT_STATE_DIR = "/var/lib/veilgate"
DEFAULT_STATUS_SOCKET = "/run/veilgate/client.sock"


@dataclass
class ClientConfig:
    gateway_host: str
    gateway_public_key: bytes
    private_key: bytes
    credential: bytes
    udp_port: int = 51820
    tcp_port: int = 8443
    tls_port: int = 443
    tls_name: str = ""
    """The name the gateway's TLS certificate is for: the SNI of the TLS carrier."""
    tls_pin: str = ""
    """SHA-256 of the gateway's TLS key (SubjectPublicKeyInfo), hex; empty: no TLS carrier."""
    plain_tcp: bool = True
    """Whether ``auto`` falls back to plain TCP (after TLS, where it is configured)."""
    transport: str = "auto"
    udp_grace: float = 0.3
    reprobe_interval: float = 10.0
    stall_timeout: float = 3.0
    keepalive: float = 10.0
    rekey_after: float = REKEY_AFTER_TIME
    tun_name: str = "vg0"
    kill_switch: bool = False
    allow_lan: bool = False
    apply_dns: bool = True
    udp_offload: bool = True
    tun_offload: bool = True
    """The TUN opened with IFF_VNET_HDR: the compiled data path writes coalesced TCP packets."""
    obfuscation: bool = False
    tcp_shape_frames: int = 8
    """With obfuscation: how many first frames on a plain TCP connection are padded (0: none)."""
    tcp_shape_jitter: float = 0.0
    """With obfuscation: up to this many seconds of random delay before each of them."""
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    status_socket: Path = Path(DEFAULT_STATUS_SOCKET)
    log_level: str = "info"
    log_format: str = "text"
    metrics_listen: tuple[str, int] | None = None
    provider_url: str | None = None
    provider_fingerprint: str | None = None
    provider_token: str | None = None
    failover_after: float = 15.0
    gateway_addresses: tuple[str, ...] = ()
    """More addresses of the gateway besides ``gateway_host``'s (provider mode: the document's ipv6)."""
    user: str = "veilgate"
    source: Path | None = None
    """The file this configuration was read from (a reload reads it again)."""


def load_client_config(path: str | Path, secrets: tuple[bytes, bytes] | None = None) -> ClientConfig:
    """``secrets``: the private key and credential already in use (a reload; their files are root's
    alone and read at start only)."""
    root = load_toml(path)
    c = root.section("client", required=True)
    if "provider_url" in c.data:
        return _provider_mode(root, c)
    host = c.get_str("gateway_host", expected="the gateway's IP address or host name (or provider_url)")
    if not _is_address(host) and not _HOST_NAME.match(host):
        raise c.error("gateway_host", "the gateway's IP address or host name", host)
    try:
        gateway_key = decode_key(c.get_str("gateway_public_key", expected="the gateway's base64 public key"))
    except ValueError:
        raise c.error(
            "gateway_public_key",
            "the gateway's base64 public key (32 bytes)",
            c.data.get("gateway_public_key"),
        ) from None
    private_key_file, credential_file = c.path_value("private_key_file"), c.path_value("credential_file")
    if secrets is not None:
        private_key, credential = secrets
    else:
        private_key, credential = _read_secrets(c, private_key_file, credential_file)
    cfg = ClientConfig(
        gateway_host=host,
        gateway_public_key=gateway_key,
        private_key=private_key,
        credential=credential,
        udp_port=c.port("udp_port", 51820),
        tcp_port=c.port("tcp_port", 8443),
        **_tls(c),
        **_common(c),
    )
    if cfg.transport == "tls" and not cfg.tls_pin:
        raise c.error(
            "tls_pin", 'the gateway\'s TLS pin (`veilgate tls-cert` prints it) for transport = "tls"'
        )
    c.reject_unknown()
    root.reject_unknown()
    return cfg


def _read_secrets(c: Section, private_key_file: Path, credential_file: Path) -> tuple[bytes, bytes]:
    private_key = read_key_file(private_key_file, "client private key")
    try:
        credential_text = credential_file.read_text().strip()
    except OSError as exc:
        raise c.error(
            "credential_file", f"a readable credential file ({exc.strerror})", str(credential_file)
        ) from None
    try:
        credential = decode_key(credential_text, "credential", length=-1)
    except ValueError:
        raise c.error(
            "credential_file",
            "a file holding a base64 credential from `veilgate issue`",
            str(credential_file),
        ) from None
    return private_key, credential


_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _tls(c: Section) -> dict[str, Any]:
    """The TLS carrier: tls_name and tls_pin together, or neither; plain_tcp defaults to on without them."""
    if ("tls_name" in c.data) != ("tls_pin" in c.data):
        missing = "tls_pin" if "tls_name" in c.data else "tls_name"
        raise c.error(
            missing, "tls_name and tls_pin together (the gateway's `veilgate tls-cert` prints both)"
        )
    out: dict[str, Any] = {"tls_port": c.port("tls_port", 443), "plain_tcp": True}
    if "tls_name" in c.data:
        name = c.get_str("tls_name", expected="the gateway's TLS name")
        if not _HOST_NAME.match(name) or _is_address(name):
            raise c.error("tls_name", "a DNS name such as www.example.org", name)
        pin = c.get_str("tls_pin", expected="64 hex digits")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", pin):
            raise c.error("tls_pin", "the SHA-256 of the gateway's TLS key, 64 hex digits", pin)
        out |= {"tls_name": name, "tls_pin": pin.lower(), "plain_tcp": False}
    out["plain_tcp"] = c.get_bool("plain_tcp", out["plain_tcp"])
    return out


def _common(c: Section) -> dict[str, Any]:
    return {
        "transport": c.choice("transport", ("auto", "udp", "tls", "tcp"), "auto"),
        "udp_grace": c.get_float("udp_grace", 0.3, low=0.05, high=10),
        "reprobe_interval": c.get_float("reprobe_interval", 10.0, low=0.5, high=3600),
        "stall_timeout": c.get_float("stall_timeout", 3.0, low=0.5, high=120),
        "keepalive": c.get_float("keepalive", 10.0, low=1, high=600),
        # Only lower: the rekey must complete before the keys are refused at REJECT_AFTER_TIME.
        "rekey_after": c.get_float("rekey_after", REKEY_AFTER_TIME, low=5, high=REKEY_AFTER_TIME),
        "tun_name": c.interface_name("tun_name", "vg0"),
        "kill_switch": c.get_bool("kill_switch", False),
        "allow_lan": c.get_bool("allow_lan", False),
        "apply_dns": c.get_bool("apply_dns", True),
        "udp_offload": c.get_bool("udp_offload", True),
        "tun_offload": c.get_bool("tun_offload", True),
        "obfuscation": c.get_bool("obfuscation", False),
        "tcp_shape_frames": c.get_int("tcp_shape_frames", 8, low=0, high=64),
        "tcp_shape_jitter": c.get_int("tcp_shape_jitter_ms", 0, low=0, high=100) / 1000,
        "state_dir": c.path_value("state_dir", DEFAULT_STATE_DIR),
        "status_socket": c.path_value("status_socket", DEFAULT_STATUS_SOCKET),
        "log_level": c.choice("log_level", LEVELS, "info"),
        "log_format": c.choice("log_format", FORMATS, "text"),
        "metrics_listen": c.listen_address("metrics_listen"),
        "user": c.get_str("user", "veilgate", 'a system user name, or "root" to keep running as root'),
        "source": c.path,
    }


def _provider_mode(root: Section, c: Section) -> ClientConfig:
    """Only the provider URL and pinned fingerprint: gateways and credentials come from the provider."""
    url = c.get_str("provider_url", expected="the provider's https:// URL")
    if not url.startswith("https://"):
        raise c.error("provider_url", "an https:// URL", url)
    fingerprint = c.get_str(
        "provider_fingerprint", expected="the provider certificate's SHA-256, 64 hex digits"
    )
    try:
        if len(bytes.fromhex(fingerprint.replace(":", ""))) != 32:
            raise ValueError
    except ValueError:
        raise c.error(
            "provider_fingerprint", "the provider certificate's SHA-256, 64 hex digits", fingerprint
        ) from None
    cfg = ClientConfig(
        gateway_host="",
        gateway_public_key=b"",
        private_key=b"",
        credential=b"",
        provider_url=url,
        provider_fingerprint=fingerprint,
        provider_token=c.optional_str("provider_token"),
        failover_after=c.get_float("failover_after", 15.0, low=2, high=3600),
        plain_tcp=c.get_bool("plain_tcp", False),
        **_common(c),
    )
    c.reject_unknown()
    root.reject_unknown()
    return cfg
