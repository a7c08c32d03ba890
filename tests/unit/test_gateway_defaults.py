"""A gateway on its defaults serves clients a way out: forwarding on, NAT out of the default route's
interface, and a DNS server pushed (its own tunnel address unless set), on a fake host."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.fakes import FakeHost, loopback_gateway
from tests.unit.test_gateway_daemon import POOL, connect, run_gateway
from veilgate.config import ConfigError
from veilgate.credentials import IssuerKey
from veilgate.driver import Runtime
from veilgate.gateway.daemon import Gateway
from veilgate.testing.rawclient import RawClient
from veilgate.transport import loop as event_loop

Scenario = Callable[[Gateway, FakeHost, Callable[[], RawClient]], object]


def test_defaults_forward_nat_out_of_the_default_route_and_push_the_gateway_for_dns(tmp_path: Path) -> None:
    async def scenario(gw: Gateway, host: FakeHost, new_client: Callable[[], RawClient]) -> None:
        assert host.forwarding == [(False, "lo")]  # no IPv6 pool in this gateway: IPv4 only
        [firewall] = host.firewalls
        assert f'ip saddr {POOL} oifname "lo" masquerade' in firewall.bodies[0]
        client = new_client()
        await connect(client)
        assert client.core.config is not None
        assert client.core.config.dns == (ipaddress.IPv4Address("10.77.0.1"),)

    run_gateway(tmp_path, "python", scenario)


def test_ipv6_pool_turns_on_ipv6_forwarding_and_pushes_both_addresses(tmp_path: Path) -> None:
    async def scenario(gw: Gateway, host: FakeHost, new_client: Callable[[], RawClient]) -> None:
        assert host.forwarding == [(True, "lo")]
        assert 'ip6 saddr fd7a:77::/64 oifname "lo" masquerade' in host.firewalls[0].bodies[0]
        assert gw.dns == (ipaddress.IPv4Address("10.77.0.1"), ipaddress.IPv6Address("fd7a:77::1"))

    run_gateway(tmp_path, "python", scenario, pool_v6=ipaddress.IPv6Network("fd7a:77::/64"))


def test_explicit_nat_interface_and_dns_are_used(tmp_path: Path) -> None:
    async def scenario(gw: Gateway, host: FakeHost, new_client: Callable[[], RawClient]) -> None:
        assert host.forwarding == [(False, "vgup0")]
        assert 'oifname "vgup0" masquerade' in host.firewalls[0].bodies[0]
        client = new_client()
        await connect(client)
        assert client.core.config is not None
        assert client.core.config.dns == (ipaddress.IPv4Address("192.0.2.53"),)

    run_gateway(
        tmp_path, "python", scenario, nat_interface="vgup0", dns=[ipaddress.IPv4Address("192.0.2.53")]
    )


def test_nat_off_still_forwards(tmp_path: Path) -> None:
    async def scenario(gw: Gateway, host: FakeHost, new_client: Callable[[], RawClient]) -> None:
        assert host.forwarding == [(False, None)]
        assert "masquerade" not in host.firewalls[0].bodies[0]

    run_gateway(tmp_path, "python", scenario, nat=False)


def test_nat_without_a_default_route_is_one_clear_error_before_anything_changes(tmp_path: Path) -> None:
    config = loopback_gateway(tmp_path, IssuerKey.generate(), "vgfake0", POOL, source=tmp_path / "gw.toml")
    host = FakeHost(default_device=None)
    gateway = Gateway(config, Runtime(host=host))
    with pytest.raises(ConfigError) as info:
        event_loop.run(gateway.start())
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'gw.toml'}: gateway.nat_interface: not set")
    assert "no default route" in message and "nat = false" in message
    assert host.tuns == [] and host.forwarding == [] and host.firewalls == []


@pytest.mark.parametrize(
    ("dns", "resolver", "warned"),
    [
        (None, False, "no resolver listens on port 53 there"),
        (None, True, None),
        (None, None, None),  # cannot tell: no warning
        ([], None, "dns = []: clients get no DNS server"),
        ([ipaddress.IPv4Address("192.0.2.53")], False, None),
    ],
)
def test_a_dns_setting_that_leaves_clients_without_dns_is_warned_about(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    dns: list[ipaddress.IPv4Address] | None,
    resolver: bool | None,
    warned: str | None,
) -> None:
    config = loopback_gateway(tmp_path, IssuerKey.generate(), "vgfake0", POOL, dns=dns)
    gateway = Gateway(config, Runtime(host=FakeHost(resolver=resolver)))

    async def start_stop() -> None:
        await gateway.start()
        await asyncio.sleep(0)
        await gateway.stop()

    with caplog.at_level(logging.WARNING, logger="veilgate.gateway"):
        event_loop.run(start_stop())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warned is None:
        assert not any("DNS" in w or "dns" in w for w in warnings), warnings
    else:
        assert any(warned in w for w in warnings), warnings
