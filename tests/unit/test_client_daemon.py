"""The client daemon, whole, against the gateway daemon, both on fake hosts in one process (no root).

Their UDP and TCP sockets are real, on loopback; each TUN device is a socketpair whose other end the
test holds. What the client changes on the system (addresses, routes, DNS) is recorded by its fake
host and must all be undone when it stops.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.fakes import FakeHost, FakeTun, free_port, loopback_gateway
from tests.unit.harness import ipv4_packet
from veilgate import fastpath
from veilgate.client.config import ClientConfig
from veilgate.client.daemon import Client
from veilgate.credentials import IssuerKey, issue
from veilgate.driver import Runtime
from veilgate.gateway.daemon import Gateway
from veilgate.protocol.crypto import KeyPair
from veilgate.transport import loop as event_loop


@pytest.fixture(params=["python", "compiled"])
def environ(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "compiled" and not fastpath.BUILT:
        pytest.skip("the compiled data path is not built")
    return {fastpath.ENV: "1" if request.param == "compiled" else "0"}


Scenario = Callable[[Client, FakeTun, FakeTun], Awaitable[None]]


def run_pair(
    tmp_path: Path, environ: dict[str, str], scenario: Scenario, **client_options: object
) -> FakeHost:
    issuer = IssuerKey.generate()
    gw_config = loopback_gateway(
        tmp_path,
        issuer,
        "vgfgw0",
        ipaddress.IPv4Network("10.78.0.0/24"),
        dns=[ipaddress.IPv4Address("10.78.0.1")],
    )
    gateway_host, client_host = FakeHost(), FakeHost()
    gateway = Gateway(gw_config, Runtime(host=gateway_host, environ=environ))
    key = KeyPair.generate()
    options: dict[str, object] = {
        "udp_port": gw_config.udp_port,
        "tcp_port": gw_config.tcp_port,
        "tun_name": "vgfcl0",
        "state_dir": tmp_path / "state",
        "status_socket": tmp_path / "client.sock",
        **client_options,
    }
    client_config = ClientConfig(
        gateway_host="127.0.0.1",
        gateway_public_key=gateway.core.public,
        private_key=key.private_bytes(),
        credential=issue(issuer, key.public, time.time(), granularity=1).encode(),
        **options,  # type: ignore[arg-type]
    )
    client = Client(client_config, Runtime(host=client_host, environ=environ))

    async def main() -> None:
        await gateway.start()
        try:
            await client.start()
            try:
                await scenario(client, gateway_host.tuns[0], client_host.tuns[0])
            finally:
                await client.stop()
        finally:
            await gateway.stop()

    event_loop.run(main())
    return client_host


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def exchange(client: Client, gw_tun: FakeTun, client_tun: FakeTun) -> None:
    """A packet each way through the tunnel, from one TUN device to the other."""
    assert client.applied is not None and client.applied.ipv4 is not None
    mine = str(client.applied.ipv4.ip)
    up = ipv4_packet(mine, "192.0.2.9", b"up")
    client_tun.inject(up)
    assert await asyncio.to_thread(gw_tun.receive) == up
    down = ipv4_packet("192.0.2.9", mine, b"down")
    gw_tun.inject(down)
    assert await asyncio.to_thread(client_tun.receive) == down


def test_the_client_applies_the_config_carries_packets_and_undoes_everything(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    seen: dict[str, object] = {}

    async def scenario(client: Client, gw_tun: FakeTun, client_tun: FakeTun) -> None:
        await until(lambda: client.applied is not None)
        await exchange(client, gw_tun, client_tun)
        host = client.host
        assert isinstance(host, FakeHost)
        seen["routes"] = list(host.routes)
        seen["dns"] = list(host.dns)
        assert client.status()["transport"] == "udp" and client.status()["connected"]
        assert (client.config.state_dir / "client-vgfcl0.json").exists()

    host = run_pair(tmp_path, environ, scenario)
    assert seen["routes"] == [
        ("127.0.0.1/32", None, "lo"),
        ("0.0.0.0/1", None, "vgfcl0"),
        ("128.0.0.0/1", None, "vgfcl0"),
        ("::/1", None, "vgfcl0"),
        ("8000::/1", None, "vgfcl0"),
    ]
    assert seen["dns"] == ["10.78.0.1"]
    assert host.routes == [] and host.dns == [] and host.tuns[0].closed
    assert not (tmp_path / "state" / "client-vgfcl0.json").exists()


def test_with_udp_unanswered_the_client_falls_back_to_tcp(tmp_path: Path, environ: dict[str, str]) -> None:
    metrics_port = free_port()

    async def scenario(client: Client, gw_tun: FakeTun, client_tun: FakeTun) -> None:
        await until(lambda: client.applied is not None)
        assert client.paths.active == "tcp"
        [switch] = client.paths.switches
        assert switch.new == "tcp" and switch.took < 2.0
        await exchange(client, gw_tun, client_tun)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{metrics_port}/metrics") as response,
        ):
            text = await response.text()
        samples = {
            (s.name, tuple(s.labels.values())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("veilgate_client_fallbacks_to_tcp_total", ())] == 1
        assert samples[("veilgate_client_returns_to_udp_total", ())] == 0
        assert samples[("veilgate_client_transport", ("tcp",))] == 1
        assert samples[("veilgate_client_transport", ("udp",))] == 0
        assert samples[("veilgate_client_handshakes_total", ())] == 1
        assert samples[("veilgate_client_bytes_total", ("out",))] > 0
        assert client.status()["totals"] == client.totals()

    # nobody listens on that UDP port
    run_pair(tmp_path, environ, scenario, udp_port=free_port(), metrics_listen=("127.0.0.1", metrics_port))


def test_forced_tcp_never_sends_on_udp(tmp_path: Path, environ: dict[str, str]) -> None:
    async def scenario(client: Client, gw_tun: FakeTun, client_tun: FakeTun) -> None:
        await until(lambda: client.applied is not None)
        assert client.udp is None and client.paths.active == "tcp"
        await exchange(client, gw_tun, client_tun)

    run_pair(tmp_path, environ, scenario, transport="tcp")
