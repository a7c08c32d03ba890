"""Key files: one base64 line (like WireGuard's), written with mode 0600."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from veilgate.config.toml import ConfigError


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def decode_key(text: str, what: str = "key", length: int = 32) -> bytes:
    """Decode base64; ``length`` -1 accepts any length."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what}: not base64") from None
    if length >= 0 and len(raw) != length:
        raise ValueError(f"{what}: expected {length} bytes of base64, got {len(raw)}")
    return raw


def read_key_file(path: Path, what: str = "private key", length: int = 32) -> bytes:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    try:
        return decode_key(text, what, length)
    except ValueError as exc:
        make = "veilgate issuer init" if "issuer" in what else "veilgate genkey"
        raise ConfigError(f"{path}: {exc} (make one with `{make}`)") from None


def write_key_file(path: Path, raw: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(encode_key(raw) + "\n")
