"""The provider service's configuration file (TOML)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from veilgate.config import load_toml
from veilgate.config.toml import Section
from veilgate.monitor.logs import FORMATS, LEVELS
from veilgate.provider.document import GatewayEntry

DEFAULT_STATUS_SOCKET = "/run/veilgate/provider.sock"


@dataclass
class ProviderConfig:
    name: str
    state_dir: Path
    listen: str = "0.0.0.0"
    port: int = 8443
    epoch_length: int = 86400
    access: str = "open"
    tokens: frozenset[str] = frozenset()
    credentials_per_token_per_epoch: int = 4
    open_rate_per_minute: int = 10
    gateways: list[GatewayEntry] = field(default_factory=list)
    rsa_bits: int = 3072
    status_socket: Path | None = None
    log_level: str = "info"
    log_format: str = "text"
    metrics_listen: tuple[str, int] | None = None
    user: str = "veilgate"
    source: Path | None = None
    """The file this configuration was read from (a reload reads it again)."""


def _gateway_tls(s: Section) -> tuple[int, str, str]:
    """A [[gateway]]'s TLS carrier: tls_name and tls_pin together (its `veilgate tls-cert` prints
    both), or neither."""
    if ("tls_name" in s.data) != ("tls_pin" in s.data):
        missing = "tls_pin" if "tls_name" in s.data else "tls_name"
        raise s.error(
            missing, "tls_name and tls_pin together (the gateway's `veilgate tls-cert` prints both)"
        )
    if "tls_name" not in s.data:
        s.get_int("tls_port", 443, low=1, high=65535)
        return 0, "", ""
    name = s.get_str("tls_name", expected="the DNS name of the gateway's TLS certificate")
    pin = s.get_str("tls_pin", expected="64 hex digits")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", pin):
        raise s.error("tls_pin", "the SHA-256 of the gateway's TLS key, 64 hex digits", pin)
    return s.port("tls_port", 443), name, pin.lower()


def load_provider_config(path: str | Path) -> ProviderConfig:
    root = load_toml(path)
    p = root.section("provider", required=True)
    cfg = ProviderConfig(
        name=p.get_str("name", expected="the provider's display name"),
        state_dir=p.path_value("state_dir"),
        listen=p.get_str("listen", "0.0.0.0", "an IP address to listen on"),
        port=p.port("port", 8443),
        epoch_length=p.get_int("epoch_length", 86400, low=10, high=30 * 86400),
        access=p.choice("access", ("open", "token"), "open"),
        credentials_per_token_per_epoch=p.get_int("credentials_per_token_per_epoch", 4, low=1, high=1000),
        open_rate_per_minute=p.get_int("open_rate_per_minute", 10, low=1, high=100000),
        rsa_bits=p.get_int("rsa_bits", 3072, low=2048, high=4096),
        status_socket=p.path_value("status_socket", DEFAULT_STATUS_SOCKET),
        log_level=p.choice("log_level", LEVELS, "info"),
        log_format=p.choice("log_format", FORMATS, "text"),
        metrics_listen=p.listen_address("metrics_listen"),
        user=p.get_str("user", "veilgate", 'a system user name, or "root" to keep running as root'),
        source=Path(path),
    )
    try:
        ipaddress.ip_address(cfg.listen)
    except ValueError:
        raise p.error("listen", 'an IP address to listen on, like "0.0.0.0" or "::"', cfg.listen) from None
    if cfg.access == "token":
        tokens_file = p.path_value("tokens_file")
        try:
            lines = tokens_file.read_text().splitlines()
        except OSError as exc:
            raise p.error(
                "tokens_file", f"a readable file of invite tokens ({exc.strerror})", str(tokens_file)
            ) from None
        cfg.tokens = frozenset(t.strip() for t in lines if t.strip() and not t.startswith("#"))
        if not cfg.tokens:
            raise p.error(
                "tokens_file", "a file with at least one invite token (one per line)", str(tokens_file)
            )
    elif "tokens_file" in p.data:
        p.optional_str("tokens_file")
    p.reject_unknown()
    for s in root.tables("gateway", "one or more [[gateway]] tables"):
        text = s.get_str("public_key", expected="the gateway's base64 public key")
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            raise s.error("public_key", "the gateway's base64 public key (32 bytes)", text)
        cfg.gateways.append(
            GatewayEntry(
                s.get_str("name", expected="a gateway name"),
                s.host("host", "the gateway's IPv4 address, or a name that resolves to one"),
                key,
                s.port("udp_port", 51820),
                s.get_int("tcp_port", 8443, low=0, high=65535),
                s.address("ipv6", 6, "", optional=True),
                s.get_str("location", "unknown", "a location label"),
                s.get_float("load", 0.0, low=0.0, high=1.0),
                *_gateway_tls(s),
                s.get_bool("obfuscation", False),
            )
        )
        s.reject_unknown()
    root.reject_unknown()
    return cfg
