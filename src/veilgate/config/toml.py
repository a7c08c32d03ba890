"""Typed access to TOML configuration with precise errors.

Every accessor names the file and the dotted field when a value is missing or
has the wrong type, and says what is expected, e.g.::

    /etc/veilgate/gateway.toml: gateway.udp_port: expected an integer from 1 to 65535, got "fifty"
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING = object()


class ConfigError(Exception):
    """A configuration file is missing, unreadable or wrong; the message says where and what is expected."""


def load_toml(path: str | Path) -> Section:
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the whole file first
        raise ConfigError(f"{p}: not valid TOML: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    return Section(p, "", data)


class Section:
    """A table of a configuration file; accessors check types and record which keys were read."""

    def __init__(self, path: Path, prefix: str, data: dict[str, Any]) -> None:
        self.path = path
        self.prefix = prefix
        self.data = data
        self._read: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, expected: str, got: object = _MISSING) -> ConfigError:
        where = f"{self.path}: {self._name(key)}"
        if got is _MISSING:
            return ConfigError(f"{where}: missing; expected {expected}")
        return ConfigError(f"{where}: expected {expected}, got {got!r}")

    def _get(self, key: str, default: object) -> object:
        self._read.add(key)
        if key in self.data:
            return self.data[key]
        return default

    def section(self, key: str, required: bool = False) -> Section:
        value = self._get(key, _MISSING)
        if value is _MISSING:
            if required:
                raise self.error(key, "a table [" + self._name(key) + "]")
            value = {}
        if not isinstance(value, dict):
            raise self.error(key, "a table", value)
        return Section(self.path, self._name(key), value)

    def tables(self, key: str, expected: str) -> list[Section]:
        """An array of tables (``[[key]]``), at least one."""
        value = self._get(key, _MISSING)
        if value is _MISSING or not isinstance(value, list) or not value:
            raise self.error(key, expected, None if value is _MISSING else value)
        if not all(isinstance(v, dict) for v in value):
            raise self.error(key, expected, value)
        return [Section(self.path, f"{self._name(key)}[{i}]", v) for i, v in enumerate(value)]

    def get_str(self, key: str, default: str | None = None, expected: str = "a string") -> str:
        value = self._get(key, _MISSING if default is None else default)
        if value is _MISSING:
            raise self.error(key, expected)
        if not isinstance(value, str) or not value:
            raise self.error(key, expected, value)
        return value

    def optional_str(self, key: str) -> str | None:
        value = self._get(key, None)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(key, "a string", value)
        return value

    def get_bool(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "true or false", value)
        return value

    def get_int(self, key: str, default: int | None = None, *, low: int = 0, high: int = 2**31) -> int:
        expected = f"an integer from {low} to {high}"
        value = self._get(key, _MISSING if default is None else default)
        if value is _MISSING:
            raise self.error(key, expected)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(key, expected, value)
        return value

    def get_float(
        self, key: str, default: float | None = None, *, low: float = 0.0, high: float = 1e9
    ) -> float:
        expected = f"a number from {low:g} to {high:g}"
        value = self._get(key, _MISSING if default is None else default)
        if value is _MISSING:
            raise self.error(key, expected)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise self.error(key, expected, value)
        return float(value)

    def port(self, key: str, default: int | None = None) -> int:
        return self.get_int(key, default, low=1, high=65535)

    def listen_address(self, key: str) -> tuple[str, int] | None:
        """An optional ``"address:port"`` to listen on (``"[::1]:port"`` for IPv6); None if unset or ""."""
        expected = 'an address and port like "127.0.0.1:9586" or "[::1]:9586", or "" for none'
        text = self.optional_str(key)
        if not text:
            return None
        host, sep, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            sep = ""  # an IPv6 address needs its brackets to carry a port
        try:
            ipaddress.ip_address(host)
            number = int(port)
        except ValueError:
            raise self.error(key, expected, text) from None
        if not sep or not 1 <= number <= 65535:
            raise self.error(key, expected, text)
        return host, number

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        expected = "one of " + ", ".join(repr(c) for c in choices)
        value = self._get(key, default)
        if value not in choices:
            raise self.error(key, expected, value)
        assert isinstance(value, str)
        return value

    def str_list(self, key: str, default: list[str] | None = None) -> list[str]:
        value = self._get(key, _MISSING if default is None else default)
        if value is _MISSING:
            raise self.error(key, "a list of strings")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "a list of strings", value)
        return list(value)

    def network(
        self, key: str, version: int, default: str | None = None
    ) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        expected = f'an IPv{version} network like "{"10.201.0.0/16" if version == 4 else "fd7a:201::/64"}"'
        text = self.get_str(key, default, expected)
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError:
            raise self.error(key, expected, text) from None
        if net.version != version:
            raise self.error(key, expected, text)
        return net

    def address_list(
        self, key: str, default: list[str]
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        out = []
        for text in self.str_list(key, default):
            try:
                out.append(ipaddress.ip_address(text))
            except ValueError:
                raise self.error(key, "a list of IP addresses", text) from None
        return out

    def network_list(
        self, key: str, default: list[str]
    ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        out = []
        for text in self.str_list(key, default):
            try:
                out.append(ipaddress.ip_network(text, strict=True))
            except ValueError:
                raise self.error(key, 'a list of networks like "0.0.0.0/0"', text) from None
        return out

    def path_value(self, key: str, default: str | None = None) -> Path:
        """A path; relative paths are relative to the configuration file's folder."""
        p = Path(self.get_str(key, default, "a file path"))
        return p if p.is_absolute() else self.path.parent / p

    def reject_unknown(self) -> None:
        """Unknown keys are typos more often than not: name them."""
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            name = self._name(unknown[0])
            raise ConfigError(
                f"{self.path}: {name}: unknown setting (check the spelling; see docs/configuration.md)"
            )
