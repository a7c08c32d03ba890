"""A gateway under a flood of message 1s at ten times its handshake capacity, from many source addresses.

The attacker knows the gateway's public key (the provider document publishes it), so its
message 1s carry a valid mac1; it sends from 62 addresses and never answers a cookie reply.
While the flood holds the gateway in its steady state, a new client must connect within 5 s,
and an established session must rekey without losing its tunnel: it stays connected, ping
through it keeps working, and a fresh handshake completes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time

import pytest

from veilgate.protocol.constants import PENDING_HANDSHAKE_TIMEOUT
from veilgate.testing import netns
from veilgate.testing.deploy import Deployment, wait_for
from veilgate.testing.flood import measure_capacity
from veilgate.testing.floodrun import FLOOD_SUBNET, FloodRun, pin_apart, udp_stats

from .test_vpn import ping

pytestmark = pytest.mark.e2e

FLOOD_MULTIPLE = 10
"""The flood's rate, in multiples of the gateway's handshake capacity (message 1 to message 2)."""
SOURCES = 62
CONNECT_WITHIN = 5.0
REKEY_AFTER = 5.0
"""The established client's rekey_after: it rekeys every 5 s, before and throughout the flood."""
PHASE = 8.0
"""The steady-state phase: long enough for a rekey (due every 5 s) with a retry after a cookie."""
MAX_PING_LOSS = 0.2


def _ping_loss(output: str) -> float:
    for line in output.splitlines():
        if "packet loss" in line:
            return float(line.split("%")[0].split()[-1]) / 100
    return 1.0


WARMUP = PENDING_HANDSHAKE_TIMEOUT + 0.5
"""The flood runs this long before the steady state is measured: every pending handshake the
gateway then holds came from the flood, and the oldest of them have expired and been replaced."""


def test_under_a_handshake_flood_a_new_client_connects_and_a_session_rekeys(
    deploy: Deployment, data_path: str
) -> None:
    topo = deploy.topo
    capacity = measure_capacity(rounds=1, cookie_replies=2000)
    rate = FLOOD_MULTIPLE * capacity.handshakes_per_second
    figures: dict[str, object] = {"data_path": data_path, "capacity": capacity.handshakes_per_second}
    flooder = topo.add_host("f", FLOOD_SUBNET, addresses=SOURCES)
    ns2, _ = topo.add_client(2)

    deploy.make_client("c1", rekey_after=REKEY_AFTER)
    deploy.start_client("c1")
    deploy.wait_client("c1")
    assert ping(topo, topo.client, netns.INTERNET_V4)
    deploy.make_client("c2")

    flood = FloodRun(
        topo, flooder, (netns.GATEWAY_V4, deploy.udp_port), deploy.gateway_key.public, rate, 30.0
    )
    started = flood.wait_started()
    assert deploy.gateway_proc is not None
    figures["pinned_apart"] = pin_apart(flood.proc.pid, deploy.gateway_proc.pid)
    wait_for(lambda: time.monotonic() - started >= WARMUP, WARMUP + 1, "the flood's steady state")

    # The steady state: a new client, and the established one's rekeys, ping through it all along.
    udp0 = udp_stats(topo, topo.gateway)
    rekeys0 = deploy.gateway_status()["counters"].get("rekeys", 0)
    count = int(PHASE / 0.2)
    pinger = topo.spawn(
        topo.client,
        *("ping", "-4", "-n", "-i", "0.2", "-c", str(count), "-W", "1", netns.INTERNET_V4),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    phase_start = time.monotonic()
    deploy.start_client("c2", ns=ns2)  # returns when its status socket is up, as its handshake starts
    with contextlib.suppress(TimeoutError):
        deploy.wait_client("c2", timeout=CONNECT_WITHIN + 5)
    c2 = deploy.client_status("c2")
    connect_s = time.monotonic() - phase_start
    figures["new_client_connect_s"] = round(connect_s, 2) if c2.get("connected") else None
    figures["new_client_transport"] = c2.get("transport")  # a client falls back to TCP by itself
    wait_for(lambda: time.monotonic() - phase_start >= PHASE, PHASE + 1, "the phase to end")
    c1 = deploy.client_status("c1")
    gateway = deploy.gateway_status()
    udp1 = udp_stats(topo, topo.gateway)
    out, _ = pinger.communicate(timeout=15)
    report = flood.report()

    figures |= {
        "flood_target": round(rate),
        "flood_rate": report.rate,
        "gateway_socket_drops_in_phase": udp1["RcvbufErrors"] - udp0["RcvbufErrors"],
        "ping_loss": _ping_loss(out),
        "c1_connected": c1.get("connected"),
        "c1_transport": c1.get("transport"),
        "c1_last_handshake_age": c1.get("last_handshake_age"),
        "rekeys_in_phase": gateway["counters"].get("rekeys", 0) - rekeys0,
        "pending": gateway["pending_handshakes"],
        "counters": {k: v for k, v in gateway["counters"].items() if not k.startswith(("tun", "udp"))},
        "flood_replies": {"cookie": report.cookie_replies, "response": report.responses},
    }
    print("flood figures:", json.dumps(figures))
    # The flood must have been what the test says, or the rest proves nothing.
    assert report.rate >= 0.8 * rate, (
        f"the flooder reached only {report.rate:.0f}/s of {rate:.0f}/s: {figures}"
    )
    assert report.sources == SOURCES
    # (a) A new client connects within 5 s.
    assert c2.get("connected") and connect_s <= CONNECT_WITHIN, f"no new client within 5 s: {figures}"
    # (b) The established session rekeyed during the phase without losing its tunnel.
    assert c1.get("connected"), f"the established session lost its tunnel: {figures}"
    assert figures["rekeys_in_phase"], f"no rekey completed during the flood: {figures}"
    assert c1.get("last_handshake_age") is not None and c1["last_handshake_age"] < PHASE, figures
    assert _ping_loss(out) <= MAX_PING_LOSS, f"ping through the tunnel lost too much: {figures}"
