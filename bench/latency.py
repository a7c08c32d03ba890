"""Ping RTT through each tunnel at two ping intervals, against two floors: ``make bench-latency``.

The RTT a tunnel adds depends on how long its processes slept before the packet (see
docs/performance.md, "Why an idle gap costs more than the cipher"). This study pings through
veilgate over UDP (on its compiled data path and on the pure-Python one) and wireguard-go at a
1 ms interval (the processes stay busy) and a 20 ms one (each packet finds them asleep, as in
``make bench``), next to two relays that are not VPNs but floors: ``latency/relay.py``, the least
a Python process can do per packet (read, one AEAD call, send) and, when a C compiler and the
OpenSSL headers are present, ``latency/relay.c``, the same in C. Same two-namespace topology as
bench/compare.py, rounds interleaved, medians of the per-packet RTTs. Run as root. Not a test.

First, in-process and without root: how long the event loop takes from a datagram sent by
another process after a 20 ms pause to the reader's callback, and from that callback making a
second descriptor ready to the second callback, with asyncio's ``add_reader`` and with
veilgate's direct readers (``veilgate.transport.loop``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # the topology and contenders of the side-by-side benchmark

from veilgate.transport import loop as event_loop

HERE = Path(__file__).resolve().parent
RELAY_NET = ("10.102.0.1", "10.102.0.2")
PORT = "51830"


def rtts(b: compare.Bench, address: str, interval: float, count: int) -> list[float]:
    r = b.ns(b.a, "ping", "-c", str(count), "-i", str(interval), address, check=False, timeout=count + 60)
    return [float(line.split("time=")[1].split()[0]) for line in r.stdout.splitlines() if "time=" in line]


def build_c_relay(work: Path) -> Path | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not Path("/usr/include/openssl/evp.h").exists():
        return None
    out = work / "relay"
    result = subprocess.run(
        [cc, "-O2", "-o", str(out), str(HERE / "latency" / "relay.c"), "-lcrypto"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out if result.returncode == 0 else None


@contextlib.contextmanager
def relay(b: compare.Bench, kind: str, c_relay: Path | None) -> Iterator[str]:
    ends = ((b.a, compare.UA, compare.UB, RELAY_NET[0]), (b.b, compare.UB, compare.UA, RELAY_NET[1]))
    procs = []
    for i, (ns, local, peer, inner) in enumerate(ends):
        tun = f"vgbr{i}{b.tag}"
        if kind == "c-relay":
            assert c_relay is not None
            procs.append(b.spawn(ns, str(c_relay), tun, local, peer, PORT, log=f"{kind}.log"))
            compare._wait(
                lambda t=tun, n=ns: b.ns(n, "ip", "link", "show", t, check=False).returncode == 0, 10
            )
            b.ns(ns, "ip", "addr", "add", f"{inner}/24", "dev", tun)
            b.ns(ns, "ip", "link", "set", tun, "up")
        else:
            mode = "aead" if kind == "python-relay" else "plain"
            cmd = [
                sys.executable,
                str(HERE / "latency" / "relay.py"),
                tun,
                f"{inner}/24",
                local,
                peer,
                PORT,
                mode,
            ]
            procs.append(b.spawn(ns, *cmd, log=f"{kind}.log"))
    try:
        compare._wait(
            lambda: b.ns(b.a, "ping", "-c", "1", "-W", "1", RELAY_NET[1], check=False).returncode == 0, 20
        )
        yield RELAY_NET[1]
    finally:
        for proc in procs:
            b.stop(proc)


def loop_wakeup_us(direct: bool, samples: int = 80, gap: float = 0.02) -> tuple[float, float]:
    """(datagram sent -> first callback, first callback -> the callback it made ready), medians in µs.

    A child process sends its clock reading every ``gap`` seconds; the loop sleeps in between."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    pid = os.fork()
    if pid == 0:  # the sender
        a.close()
        for _ in range(samples):
            time.sleep(gap)
            b.send(struct.pack("q", time.perf_counter_ns()))
        os._exit(0)
    b.close()
    first: list[int] = []
    chained: list[int] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        a.setblocking(False)
        c.setblocking(False)
        done = asyncio.Event()
        at = [0]

        def on_a() -> None:
            now = time.perf_counter_ns()
            (sent,) = struct.unpack("q", a.recv(8))
            first.append(now - sent)
            at[0] = now
            d.send(b"y")

        def on_c() -> None:
            c.recv(8)
            chained.append(time.perf_counter_ns() - at[0])
            if len(chained) == samples:
                done.set()

        for sock, cb in ((a, on_a), (c, on_c)):
            if direct:
                event_loop.add_data_reader(loop, sock.fileno(), cb)
            else:
                loop.add_reader(sock.fileno(), cb)
        loop.call_later(3600, lambda: None)  # an armed timer, as in the daemons
        await asyncio.wait_for(done.wait(), samples * gap + 30)

    try:
        with asyncio.Runner(
            loop_factory=event_loop.new_event_loop if direct else asyncio.new_event_loop
        ) as r:
            r.run(run())
    finally:
        os.waitpid(pid, 0)
        for s in (a, c, d):
            s.close()
    skip = 5  # the first wake-ups warm the process up
    return statistics.median(first[skip:]) / 1e3, statistics.median(chained[skip:]) / 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=300, help="pings per interval and round")
    args = ap.parse_args(argv)
    for direct in (False, True):
        runs = [loop_wakeup_us(direct) for _ in range(args.rounds)]
        print(
            f"event loop, {'direct readers ' if direct else 'asyncio add_reader'}: "
            f"wake-up to callback {statistics.median(r[0] for r in runs):.1f} µs, "
            f"callback to the callback it made ready {statistics.median(r[1] for r in runs):.1f} µs",
            flush=True,
        )
    if os.geteuid() != 0:
        print("the ping study needs root (network namespaces)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="vglat-"))
    c_relay = build_c_relay(work)
    names = ["veilgate-udp", "veilgate-udp-python", "wireguard-go", "python-relay"]
    names += ["c-relay"] if c_relay else []
    intervals = (0.001, 0.02)
    medians: dict[tuple[str, float], list[float]] = {(n, i): [] for n in names for i in intervals}
    underlay: list[float] = []
    b = compare.Bench(work)
    try:
        b.up()
        for rnd in range(1, args.rounds + 1):
            underlay.append(statistics.median(rtts(b, compare.UB, 0.02, 100)))
            for name in names:
                cm = relay(b, name, c_relay) if name.endswith("relay") else compare.contender(b, name)
                with cm as target:
                    address = target if isinstance(target, str) else target[0]
                    time.sleep(1)
                    for interval in intervals:
                        samples = rtts(b, address, interval, args.count)
                        if samples:
                            medians[(name, interval)].append(statistics.median(samples))
                print(
                    f"round {rnd} {name:19s} "
                    + "  ".join(
                        f"{i * 1000:g} ms: {medians[(name, i)][-1] if medians[(name, i)] else float('nan'):.3f}"
                        for i in intervals
                    ),
                    flush=True,
                )
    finally:
        b.down()
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(underlay)
    print(f"\nmedian per-packet ping RTT in ms over {args.rounds} rounds; underlay {base:.3f} ms\n")
    print("| | 1 ms interval | 20 ms interval | added by the tunnel at 20 ms |")
    print("|---|---|---|---|")
    for name in names:
        fast = statistics.median(medians[(name, 0.001)] or [float("nan")])
        slow = statistics.median(medians[(name, 0.02)] or [float("nan")])
        print(f"| {name} | {fast:.3f} | {slow:.3f} | {slow - base:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
