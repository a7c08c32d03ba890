"""The gateway daemon, whole, on a fake host (no root): a socketpair for its TUN, loopback sockets.

A bare client (``veilgate.testing.rawclient``) runs in a thread against the daemon's real UDP
socket; the test plays the system on the other end of the TUN. Each test runs on both data paths.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.fakes import FakeHost, free_port, loopback_gateway
from tests.unit.harness import ipv4_packet
from veilgate import fastpath
from veilgate.credentials import IssuerKey, issue
from veilgate.driver import Runtime
from veilgate.gateway.daemon import Gateway
from veilgate.protocol.crypto import KeyPair
from veilgate.testing.rawclient import RawClient
from veilgate.transport import loop as event_loop

POOL = ipaddress.IPv4Network("10.77.0.0/24")


@pytest.fixture(params=["python", "compiled"])
def data_path(request: pytest.FixtureRequest) -> str:
    if request.param == "compiled" and not fastpath.BUILT:
        pytest.skip("the compiled data path is not built")
    mode: str = request.param
    return mode


Scenario = Callable[[Gateway, FakeHost, Callable[[], RawClient]], Awaitable[None]]


def run_gateway(tmp_path: Path, data_path: str, scenario: Scenario, **options: object) -> Gateway:
    issuer = IssuerKey.generate()
    config = loopback_gateway(tmp_path, issuer, "vgfake0", POOL, **options)
    host = FakeHost()
    environ = {fastpath.ENV: "1" if data_path == "compiled" else "0"}
    gateway = Gateway(config, Runtime(host=host, environ=environ))
    clients: list[RawClient] = []

    def new_client() -> RawClient:
        key = KeyPair.generate()
        credential = issue(issuer, key.public, time.time(), granularity=1).encode()
        client = RawClient(("127.0.0.1", config.udp_port), gateway.core.public, key, credential)
        clients.append(client)
        return client

    async def main() -> None:
        await gateway.start()
        try:
            assert gateway.status()["data_path"] == data_path
            await scenario(gateway, host, new_client)
        finally:
            await gateway.stop()
            for client in clients:
                client.close()

    event_loop.run(main())
    return gateway


async def connect(client: RawClient) -> None:
    assert await asyncio.to_thread(client.connect, 5.0)
    assert await asyncio.to_thread(client.pump, 5.0, lambda: client.core.config is not None)


def test_a_session_gets_an_address_and_carries_packets_both_ways(tmp_path: Path, data_path: str) -> None:
    async def scenario(gw: Gateway, host: FakeHost, new_client: Callable[[], RawClient]) -> None:
        [tun] = host.tuns
        assert host.addresses == [("vgfake0", "10.77.0.1/24")] and host.links == [("vgfake0", 1420)]
        client = new_client()
        await connect(client)
        config = client.core.config
        assert config is not None and config.ipv4 is not None and config.ipv4.ip in POOL
        mine = str(config.ipv4.ip)
        assert gw.table.session_to(config.ipv4.ip.packed) is not None
        assert gw.status()["sessions"] == 1 and gw.status()["pool_v4_in_use"] == 1

        upstream = ipv4_packet(mine, "192.0.2.7", b"to the internet")
        client.send_packet(upstream)
        assert await asyncio.to_thread(tun.receive) == upstream

        downstream = ipv4_packet("192.0.2.7", mine, b"back to the client")
        tun.inject(downstream)
        assert await asyncio.to_thread(client.pump, 5.0, lambda: bool(client.packets))
        assert client.packets == [downstream]

        tun.inject(ipv4_packet("192.0.2.7", "10.77.0.99", b"nobody"))
        tun.inject(ipv4_packet("192.0.2.7", mine, b"after the unroutable one"))
        assert await asyncio.to_thread(client.pump, 5.0, lambda: len(client.packets) == 2)
        # The compiled loop sends the second packet before the daemon's Python counts the first.
        for _ in range(250):
            if "tun-no-route" in gw.status()["counters"]:  # type: ignore[operator]
                break
            await asyncio.sleep(0.02)
        assert gw.status()["counters"]["tun-no-route"] == 1  # type: ignore[index]

    run_gateway(tmp_path, data_path, scenario)


def test_a_closed_session_gives_back_its_address_and_routes(tmp_path: Path, data_path: str) -> None:
    async def scenario(gw: Gateway, host: FakeHost, new_client: Callable[[], RawClient]) -> None:
        client = new_client()
        await connect(client)
        config = client.core.config
        assert config is not None and config.ipv4 is not None
        session = gw.table.session_to(config.ipv4.ip.packed)
        assert session is not None and gw.table.indices
        client.close_session()
        for _ in range(100):
            if not gw.core.sessions:
                break
            await asyncio.sleep(0.02)
        assert not gw.core.sessions and len(gw.table) == 0
        assert gw.table.routes == {} and gw.table.indices == {} and gw.pool4.in_use == 0
        assert gw.status()["counters"]["sessions-ended"] == 1  # type: ignore[index]

    run_gateway(tmp_path, data_path, scenario)


def test_totals_outlive_the_sessions_they_count(tmp_path: Path, data_path: str) -> None:
    """Open a session, pass traffic both ways, close it: the totals (status and metrics) stay."""
    metrics_port = free_port()

    async def scrape() -> dict[str, float]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{metrics_port}/metrics") as response,
        ):
            assert response.status == 200
            text = await response.text()
        return {
            sample.name + str(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def scenario(gw: Gateway, host: FakeHost, new_client: Callable[[], RawClient]) -> None:
        [tun] = host.tuns
        client = new_client()
        await connect(client)
        config = client.core.config
        assert config is not None and config.ipv4 is not None
        mine = str(config.ipv4.ip)
        for i in range(3):
            client.send_packet(ipv4_packet(mine, "192.0.2.7", b"up %d" % i))
            await asyncio.to_thread(tun.receive)
        tun.inject(ipv4_packet("192.0.2.7", mine, b"down"))
        assert await asyncio.to_thread(client.pump, 5.0, lambda: bool(client.packets))
        client.close_session()
        for _ in range(100):
            if not gw.core.sessions:
                break
            await asyncio.sleep(0.02)
        assert not gw.core.sessions
        status = gw.status()
        assert "session_list" not in status and status["sessions"] == 0
        totals = status["totals"]
        assert isinstance(totals, dict)
        assert totals["sessions_opened"] == 1 and totals["sessions_ended"] == 1
        assert totals["handshakes"] == 1
        assert totals["rx_packets"] == 3 and totals["rx_bytes"] == 3 * len(
            ipv4_packet(mine, "192.0.2.7", b"up 0")
        )
        assert totals["tx_packets"] >= 1 and totals["tx_bytes"] >= len(
            ipv4_packet("192.0.2.7", mine, b"down")
        )
        assert status["rx_bytes"] == totals["rx_bytes"]
        samples = await scrape()
        assert samples["veilgate_gateway_sessions_opened_total[]"] == 1
        assert samples["veilgate_gateway_sessions_ended_total[]"] == 1
        assert samples["veilgate_gateway_handshakes_total[]"] == 1
        assert samples["veilgate_gateway_packets_total[('direction', 'in')]"] == 3
        assert samples["veilgate_gateway_bytes_total[('direction', 'in')]"] == totals["rx_bytes"]
        assert samples["veilgate_gateway_sessions[('transport', 'udp')]"] == 0
        assert samples["veilgate_gateway_pool_addresses[('family', 'v4')]"] == POOL.num_addresses - 3
        assert samples["veilgate_gateway_pool_addresses_in_use[('family', 'v4')]"] == 0
        assert samples["veilgate_gateway_data_path_compiled[]"] == (data_path == "compiled")
        assert samples["veilgate_gateway_under_load[]"] == 0

    run_gateway(tmp_path, data_path, scenario, metrics_listen=("127.0.0.1", metrics_port))


def test_clients_do_not_reach_each_other_unless_allowed(tmp_path: Path, data_path: str) -> None:
    async def scenario(gw: Gateway, host: FakeHost, new_client: Callable[[], RawClient]) -> None:
        [tun] = host.tuns
        [firewall] = host.firewalls
        assert firewall.name == "veilgate_vgfake0" and "vgfake0" in firewall.bodies[0]
        one, two = new_client(), new_client()
        await connect(one)
        await connect(two)
        assert one.core.config is not None and two.core.config is not None
        a, b = str(one.core.config.ipv4.ip), str(two.core.config.ipv4.ip)  # type: ignore[union-attr]
        one.send_packet(ipv4_packet(a, b, b"hello neighbour"))
        one.send_packet(ipv4_packet(a, "192.0.2.1", b"hello world"))
        assert (await asyncio.to_thread(tun.receive))[16:20] == ipaddress.IPv4Address("192.0.2.1").packed
        assert gw.status()["counters"]["client-to-client-dropped"] == 1  # type: ignore[index]

    gw = run_gateway(tmp_path, data_path, scenario)
    assert gw.host.firewalls[0].deleted and gw.host.tuns[0].closed  # type: ignore[attr-defined]


def test_status_socket_answers_aggregate_figures_to_root_only(tmp_path: Path, data_path: str) -> None:
    async def scenario(gw: Gateway, host: FakeHost, new_client: Callable[[], RawClient]) -> None:
        await connect(new_client())
        path = tmp_path / "gw.sock"
        assert path.stat().st_mode & 0o777 == 0o600
        reader, writer = await asyncio.open_unix_connection(str(path))
        status = json.loads(await reader.readline())
        writer.close()
        assert status["role"] == "gateway" and status["sessions"] == 1
        assert status["sessions_by_transport"] == {"udp": 1} and status["data_path"] == data_path
        text = json.dumps(status)
        assert "127.0.0.1" not in text and "10.77.0." not in text

    run_gateway(tmp_path, data_path, scenario)
    assert not (tmp_path / "gw.sock").exists()


def test_the_data_path_in_use_is_logged_with_its_reason(
    tmp_path: Path, data_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(gw: Gateway, host: FakeHost, new_client: Callable[[], RawClient]) -> None:
        pass

    with caplog.at_level(logging.INFO, "veilgate.gateway"):
        run_gateway(tmp_path, data_path, scenario)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data path: ")]
    if data_path == "compiled":
        assert line == "data path: compiled (veilgate.fastpath)"
    else:
        assert (
            line
            == "data path: pure Python, about half the throughput: VEILGATE_FASTPATH=0 in the environment"
        )
