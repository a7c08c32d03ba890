"""The gateway's addresses: resolution, Happy Eyeballs order (RFC 8305) and the staggered race."""

from __future__ import annotations

import asyncio
import time

import pytest

from veilgate.client import addresses
from veilgate.client.paths import TCP, UDP, Act, Action, PathManager


def test_order_interleaves_families_ipv6_first() -> None:
    found = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2", "2001:db8::3"]
    assert addresses.happy_eyeballs_order(found) == [
        "2001:db8::1",
        "192.0.2.1",
        "2001:db8::2",
        "192.0.2.2",
        "2001:db8::3",
    ]
    assert addresses.happy_eyeballs_order(["192.0.2.1"]) == ["192.0.2.1"]


def test_resolve_literal_and_name() -> None:
    assert addresses.resolve("2001:DB8::7", 51820) == ["2001:db8::7"]
    assert "127.0.0.1" in addresses.resolve("localhost", 51820)
    with pytest.raises(addresses.ResolveError):
        addresses.resolve("no-such-host.invalid", 51820)


def _race(outcomes: dict[str, tuple[float, bool]]) -> tuple[str | None, dict[str, float]]:
    started: dict[str, float] = {}

    async def attempt(address: str) -> bool:
        started[address] = time.monotonic()
        delay, ok = outcomes[address]
        await asyncio.sleep(delay)
        return ok

    async def main() -> str | None:
        t0 = time.monotonic()
        won = await addresses.race(list(outcomes), attempt, delay=0.1)
        for k in started:
            started[k] -= t0
        return won

    return asyncio.run(main()), started


def test_race_prefers_the_first_unless_it_is_slow() -> None:
    won, started = _race({"2001:db8::1": (0.02, True), "192.0.2.1": (0.0, True)})
    assert won == "2001:db8::1" and "192.0.2.1" not in started  # answered before the delay
    won, started = _race({"2001:db8::1": (1.0, True), "192.0.2.1": (0.01, True)})
    assert won == "192.0.2.1" and 0.09 <= started["192.0.2.1"] < 0.2  # the next started after the delay


def test_race_moves_on_at_once_after_a_failure() -> None:
    won, started = _race({"2001:db8::1": (0.0, False), "192.0.2.1": (0.0, True)})
    assert won == "192.0.2.1" and started["192.0.2.1"] < 0.05
    assert _race({"2001:db8::1": (0.0, False)})[0] is None


def test_network_change_keeps_the_path_and_tells_the_gateway() -> None:
    pm = PathManager()
    pm.start(0.0)
    pm.response_on(UDP, 0.1)
    assert pm.network_changed(1.0) == [Action(Act.SEND_KEEPALIVE, UDP)]
    tcp = PathManager(mode=TCP)
    tcp.start(0.0)
    tcp.stream_connected(0.1)
    tcp.response_on(TCP, 0.2)
    actions = [a.act for a in tcp.network_changed(1.0)]
    assert actions == [Act.CLOSE_STREAM, Act.OPEN_STREAM] and tcp.active == TCP
    assert [a.act for a in tcp.stream_connected(1.1)] == [Act.SEND_HANDSHAKE, Act.SEND_KEEPALIVE]
