"""What a flood run reads around the flooder: UDP counters, a process's CPU time and memory, CPU pinning.

``FloodRun`` itself needs a topology and runs in tests/e2e/vpn/test_flood.py and ``make bench-flood``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from veilgate.testing.floodrun import pin_apart, process_cpu_seconds, process_rss_kib, udp_stats

SNMP = """\
Ip: Forwarding DefaultTTL
Ip: 1 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors
Udp: 120 3 7 95 7 0
UdpLite: InDatagrams NoPorts
UdpLite: 0 0
"""


def test_udp_stats_pairs_the_udp_names_with_their_values() -> None:
    calls: list[tuple[str, ...]] = []

    def ns_run(*args: str) -> SimpleNamespace:
        calls.append(args)
        return SimpleNamespace(stdout=SNMP)

    stats = udp_stats(SimpleNamespace(ns_run=ns_run), "vgx1")  # type: ignore[arg-type]
    assert calls == [("vgx1", "cat", "/proc/net/snmp")]
    assert stats == {
        "InDatagrams": 120,
        "NoPorts": 3,
        "InErrors": 7,
        "OutDatagrams": 95,
        "RcvbufErrors": 7,
        "SndbufErrors": 0,
    }


def test_cpu_seconds_and_rss_of_this_process() -> None:
    before = process_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    after = process_cpu_seconds(os.getpid())
    assert 0.2 <= after - before <= 1.0
    block = bytearray(64 * 1024 * 1024)
    block[::4096] = b"\x01" * len(block[::4096])  # touch every page: resident
    assert process_rss_kib(os.getpid()) >= 64 * 1024


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning apart needs two CPUs")
def test_pin_apart_puts_the_flooder_on_the_first_cpu_and_the_gateway_on_the_last() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(2)]
    try:
        assert pin_apart(procs[0].pid, procs[1].pid)
        assert os.sched_getaffinity(procs[0].pid) == {cpus[0]}
        assert os.sched_getaffinity(procs[1].pid) == {cpus[-1]}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
