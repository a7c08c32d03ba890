"""Configuration files: a wrong or missing field names the file, the field and what is expected."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from veilgate.client.config import load_client_config
from veilgate.config import ConfigError, write_key_file
from veilgate.config.keys import encode_key
from veilgate.gateway.config import load_gateway_config
from veilgate.provider.config import load_provider_config

KEY = encode_key(bytes(range(32)))


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    write_key_file(tmp_path / "gw.key", bytes(range(32)))
    write_key_file(tmp_path / "c.key", bytes(range(32, 64)))
    (tmp_path / "c.cred").write_text(encode_key(b"x" * 122) + "\n")
    return tmp_path


def gateway_toml(tmp: Path, extra: str = "", creds: str = f'issuer_public_keys = ["{KEY}"]') -> Path:
    p = tmp / "gateway.toml"
    p.write_text(f'[gateway]\nprivate_key_file = "gw.key"\n{extra}\n[credentials]\n{creds}\n')
    return p


def error_of(fn: object, path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        fn(path)  # type: ignore[operator]
    return str(info.value)


def test_gateway_defaults(keys: Path) -> None:
    cfg = load_gateway_config(gateway_toml(keys))
    assert cfg.udp_port == 51820 and cfg.tcp_port == 8443 and cfg.tls_port == 443
    assert cfg.tls_cert_file is None  # no TLS carrier without a certificate
    assert str(cfg.pool_v4) == "10.201.0.0/16" and str(cfg.pool_v6) == "fd7a:201::/64"
    assert not cfg.client_to_client and cfg.private_key == bytes(range(32))
    assert cfg.metrics_listen is None and cfg.log_format == "text"
    # The minimum configuration forwards with NAT out of the default route's interface (found at
    # start) and pushes the gateway's own tunnel addresses for DNS.
    assert cfg.nat and cfg.nat_interface is None and cfg.dns is None
    assert cfg.listen == "0.0.0.0" and cfg.listen6 == "::" and cfg.tun_name == "vg0"


@pytest.mark.parametrize(
    ("text", "address"), [("127.0.0.1:9586", ("127.0.0.1", 9586)), ("[::1]:9586", ("::1", 9586)), ("", None)]
)
def test_metrics_listen(keys: Path, text: str, address: tuple[str, int] | None) -> None:
    cfg = load_gateway_config(gateway_toml(keys, f'metrics_listen = "{text}"\nlog_format = "json"'))
    assert cfg.metrics_listen == address and cfg.log_format == "json"


def test_gateway_explicit_network_settings(keys: Path) -> None:
    extra = (
        'listen = "192.0.2.1"\nlisten6 = ""\ntun_name = "vg-pub.1"\nnat = false\n'
        'nat_interface = "enp0s31f6"\ndns = []'
    )
    cfg = load_gateway_config(gateway_toml(keys, extra))
    assert cfg.listen == "192.0.2.1" and cfg.listen6 is None and cfg.tun_name == "vg-pub.1"
    assert not cfg.nat and cfg.nat_interface == "enp0s31f6" and cfg.dns == []
    assert load_gateway_config(gateway_toml(keys, 'listen6 = "2001:db8::1"')).listen6 == "2001:db8::1"


@pytest.mark.parametrize(
    ("extra", "field", "expected"),
    [
        ('udp_port = "fifty"', "gateway.udp_port", "an integer from 1 to 65535"),
        ("udp_port = 70000", "gateway.udp_port", "an integer from 1 to 65535"),
        ('pool_v4 = "10.0.0.0/33"', "gateway.pool_v4", "an IPv4 network"),
        ('pool_v4 = "fd00::/64"', "gateway.pool_v4", "an IPv4 network"),
        ('tun_name = "a-very-long-interface-name"', "gateway.tun_name", "1 to 15 letters"),
        ('tun_name = "vg/0"', "gateway.tun_name", "an interface name"),
        ('tun_name = "vg 0"', "gateway.tun_name", "an interface name"),
        ('tun_name = ".."', "gateway.tun_name", "an interface name"),
        ('tun_name = ""', "gateway.tun_name", "an interface name"),
        ('nat_interface = "eth0:1"', "gateway.nat_interface", "an interface name"),
        ('nat_interface = "eth0\\t"', "gateway.nat_interface", "an interface name"),
        ('listen = "eth0"', "gateway.listen", "an IPv4 address"),
        ('listen = "::"', "gateway.listen", "an IPv4 address"),
        ('listen6 = "0.0.0.0"', "gateway.listen6", "an IPv6 address"),
        ('listen6 = "any"', "gateway.listen6", "an IPv6 address"),
        ('dns = ["not an address"]', "gateway.dns", "a list of IP addresses"),
        ("udpport = 1", "gateway.udpport", "unknown setting"),
        ('log_level = "loud"', "gateway.log_level", "one of 'debug'"),
        ('log_format = "xml"', "gateway.log_format", "one of 'text', 'json'"),
        ('metrics_listen = "9586"', "gateway.metrics_listen", 'like "127.0.0.1:9586"'),
        ('metrics_listen = "localhost:9586"', "gateway.metrics_listen", 'like "127.0.0.1:9586"'),
        ('metrics_listen = "::1:9586"', "gateway.metrics_listen", '"[::1]:9586"'),
        ('metrics_listen = "127.0.0.1:0"', "gateway.metrics_listen", 'like "127.0.0.1:9586"'),
    ],
)
def test_gateway_errors_name_field_and_fix(keys: Path, extra: str, field: str, expected: str) -> None:
    path = gateway_toml(keys, extra)
    message = error_of(load_gateway_config, path)
    assert str(path) in message and field in message and expected in message


def test_gateway_missing_pieces(keys: Path) -> None:
    assert "credentials.issuer_public_keys: missing" in error_of(
        load_gateway_config, gateway_toml(keys, creds="")
    )
    assert "base64 issuer public keys" in error_of(
        load_gateway_config, gateway_toml(keys, creds='issuer_public_keys = ["nope"]')
    )
    (keys / "gw.key").unlink()
    assert "cannot read the gateway private key" in error_of(load_gateway_config, gateway_toml(keys))
    assert "no such file" in error_of(load_gateway_config, keys / "absent.toml")
    bad = keys / "bad.toml"
    bad.write_text("[gateway\n")
    assert "not valid TOML" in error_of(load_gateway_config, bad)


def client_toml(tmp: Path, extra: str = "", host: str = "192.0.2.7") -> Path:
    p = tmp / "client.toml"
    p.write_text(
        f'[client]\ngateway_host = "{host}"\ngateway_public_key = "{KEY}"\n'
        f'private_key_file = "c.key"\ncredential_file = "c.cred"\n{extra}\n'
    )
    return p


def test_client_defaults_and_errors(keys: Path) -> None:
    cfg = load_client_config(client_toml(keys))
    assert cfg.transport == "auto" and cfg.udp_grace == 0.3 and cfg.credential == b"x" * 122
    assert "gateway_host" in error_of(load_client_config, client_toml(keys, host="vpn example"))
    assert "gateway_host" in error_of(load_client_config, client_toml(keys, host="-bad.example"))
    assert load_client_config(client_toml(keys, host="vpn.example")).gateway_host == "vpn.example"
    assert load_client_config(client_toml(keys, host="2001:db8::7")).gateway_host == "2001:db8::7"
    assert cfg.allow_lan is False
    assert load_client_config(client_toml(keys, "kill_switch = true\nallow_lan = true")).allow_lan
    assert "client.allow_lan" in error_of(load_client_config, client_toml(keys, 'allow_lan = "yes"'))
    msg = error_of(load_client_config, client_toml(keys, 'transport = "quic"'))
    assert "client.transport" in msg and "one of 'auto', 'udp', 'tls', 'tcp'" in msg
    msg = error_of(load_client_config, client_toml(keys, "udp_grace = 0"))
    assert "client.udp_grace" in msg
    assert cfg.rekey_after == 120.0
    assert load_client_config(client_toml(keys, "rekey_after = 5")).rekey_after == 5.0
    for bad in ("4", "121", '"often"'):
        msg = error_of(load_client_config, client_toml(keys, f"rekey_after = {bad}"))
        assert "client.rekey_after" in msg and "a number from 5 to 120" in msg
    (keys / "c.cred").write_text("not base64!!\n")
    assert "client.credential_file" in error_of(load_client_config, client_toml(keys))


def provider_toml(tmp: Path, gateway: str) -> Path:
    p = tmp / "provider.toml"
    p.write_text(
        '[provider]\nname = "p"\nstate_dir = "state"\n'
        f'[[gateway]]\nname = "g"\npublic_key = "{KEY}"\n{gateway}\n'
    )
    return p


def test_provider_gateway_hosts_are_addresses_or_names_that_resolve(
    keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [entry] = load_provider_config(provider_toml(keys, 'host = "198.51.100.7"')).gateways
    assert entry.host == "198.51.100.7" and entry.ipv6 is None
    # A name is resolved when the file is read; clients get the address.
    [entry] = load_provider_config(provider_toml(keys, 'host = "localhost"\nipv6 = "2001:db8::7"')).gateways
    assert entry.host == "127.0.0.1" and entry.ipv6 == "2001:db8::7"
    msg = error_of(load_provider_config, provider_toml(keys, 'host = "198.51.100.8"\nipv6 = "198.51.100.7"'))
    assert "gateway[0].ipv6" in msg and "an IPv6 address" in msg

    def no_such_name(*args: object) -> object:  # no query leaves the machine from a test
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    msg = error_of(load_provider_config, provider_toml(keys, 'host = "gw1.example.net"'))
    assert str(keys / "provider.toml") in msg and "gateway[0].host" in msg
    assert "'gw1.example.net' does not resolve (Name or service not known)" in msg
