"""The driver both daemons share: its timer, run and stop, status socket and batch readers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from veilgate.driver import Driver, Runtime, Wake, read_tun, read_udp, total
from veilgate.driver.readers import TUN_BATCH
from veilgate.transport import loop as event_loop
from veilgate.transport.loop import QUIET_GAP


class Toy(Driver):
    """A driver around a core that wants the timer at ``deadline`` and counts what happens."""

    def __init__(self, status: Path | None = None) -> None:
        super().__init__(Runtime(environ={}))
        self.deadline: float | None = None
        self.fired: list[float] = []
        self.pumped = 0
        self.status_path = status
        self.stopped = False

    async def start(self) -> None:
        self.begin()
        if self.status_path is not None:
            await self.serve_status(self.status_path)

    async def stop(self) -> None:
        self.stopped = True
        self.finish()

    def pump(self, now: float) -> None:
        self.pumped += 1

    def next_deadline(self) -> float | None:
        return self.deadline

    def on_timer(self, now: float) -> None:
        self.fired.append(now)
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None

    def after_compiled(self) -> None:
        pass

    def status(self) -> dict[str, object]:
        return {"role": "toy", "pumped": self.pumped}


def test_the_timer_fires_at_the_earliest_deadline_and_keeps_an_earlier_one() -> None:
    async def main() -> None:
        toy = Toy()
        await toy.start()
        now = time.monotonic()
        toy.deadline = now + 0.05
        toy.after_io(now)
        assert toy.pumped == 1
        toy.deadline = now + 10.0  # later (a keepalive moved on): the armed timer stays
        toy.arm_timer()
        toy.deadline = now + 0.05
        await asyncio.sleep(0.2)
        assert len(toy.fired) == 1 and toy.fired[0] >= now + 0.05
        assert toy.pumped == 2  # the pump runs after the timer, as after any input
        toy.deadline = time.monotonic() + 10.0
        toy.arm_timer()
        toy.deadline = time.monotonic() + 0.02  # earlier: re-armed
        toy.arm_timer()
        await asyncio.sleep(0.15)
        assert len(toy.fired) == 2
        await toy.stop()

    event_loop.run(main())


def test_run_serves_until_asked_to_stop_and_status_answers_json(tmp_path: Path) -> None:
    path = tmp_path / "toy.sock"

    async def main() -> Toy:
        toy = Toy(path)
        task = asyncio.ensure_future(toy.run())
        while not path.exists():
            await asyncio.sleep(0.01)
        assert path.stat().st_mode & 0o777 == 0o600
        reader, writer = await asyncio.open_unix_connection(str(path))
        assert json.loads(await reader.readline()) == {"role": "toy", "pumped": 0}
        writer.close()
        assert not toy.stopped
        toy.request_stop()
        await asyncio.wait_for(task, 5.0)
        return toy

    toy = event_loop.run(main())
    assert toy.stopped and not path.exists()


def test_finish_removes_every_reader() -> None:
    a, b = socket.socketpair()

    async def main() -> list[str]:
        toy = Toy()
        await toy.start()
        seen: list[str] = []
        toy.watch(a.fileno(), lambda: seen.append(a.recv(10).decode()))
        b.send(b"one")
        await asyncio.sleep(0.05)
        toy.finish()
        b.send(b"two")
        await asyncio.sleep(0.05)
        return seen

    try:
        assert event_loop.run(main()) == ["one"]
    finally:
        a.close()
        b.close()


def test_wake_tells_a_lone_packet_from_a_stream() -> None:
    wake = Wake()
    assert wake.quiet(100.0)
    assert not wake.quiet(100.0 + QUIET_GAP / 2)
    assert wake.quiet(100.0 + 3 * QUIET_GAP)


def recorder(seen: list[tuple[bytes, bool]]) -> Callable[[bytes, float, bool], bool]:
    def route(packet: bytes, now: float, at_once: bool) -> bool:
        seen.append((packet, at_once))
        return True

    return route


def test_read_tun_sends_the_first_packet_at_once_only_after_a_quiet_spell() -> None:
    system, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    os.set_blocking(daemon.fileno(), False)
    try:
        for n in range(5):
            system.send(bytes([n]) * 30)
        seen: list[tuple[bytes, bool]] = []
        read_tun(daemon.fileno(), 0.0, True, recorder(seen))
        assert [p[0] for p, _ in seen] == [0, 1, 2, 3, 4]
        assert [at_once for _, at_once in seen] == [True, False, False, False, False]
        for _ in range(TUN_BATCH + 3):
            system.send(b"x")
        seen.clear()
        read_tun(daemon.fileno(), 0.0, False, recorder(seen))
        assert len(seen) == TUN_BATCH and not any(at_once for _, at_once in seen)
    finally:
        system.close()
        daemon.close()


def test_read_udp_reads_a_lone_datagram_once_and_a_burst_whole() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    counters: Counter[str] = Counter()
    try:
        for n in range(3):
            tx.sendto(bytes([n]), rx.getsockname())
        time.sleep(0.05)
        seen: list[tuple[bytes, Any]] = []
        read_udp(rx, False, True, lambda d, a: seen.append((d, a)), counters)
        assert [d for d, _ in seen] == [b"\x00"]  # quiet: one datagram, no receive that finds nothing
        assert seen[0][1] == tx.getsockname()
        read_udp(rx, False, False, lambda d, a: seen.append((d, a)), counters)
        assert [d for d, _ in seen] == [b"\x00", b"\x01", b"\x02"]
        assert not counters
    finally:
        rx.close()
        tx.close()


def test_read_udp_counts_a_reported_error_and_reads_on() -> None:
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    nobody = closed.getsockname()
    closed.close()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.connect(nobody)
    sock.setblocking(False)
    counters: Counter[str] = Counter()
    try:
        sock.send(b"ping")  # the port is closed: ICMP port unreachable comes back as an error
        time.sleep(0.05)
        seen: list[bytes] = []
        read_udp(sock, False, False, lambda d, a: seen.append(d), counters)
        assert counters["udp-recv-error"] == 1 and seen == []
    finally:
        sock.close()


def test_total_keeps_counters_at_zero() -> None:
    assert total({"a": 1, "b": 0}, Counter({"a": 2}), {}) == {"a": 3, "b": 0}
