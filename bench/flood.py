"""A gateway under a full-rate flood of message 1s: ``make bench-flood``. Not a test; run as root.

The scenario of tests/e2e/vpn/test_flood.py, at the rate the flooders reach rather than a paced
one: a gateway, an established client pinging through it, and flooder processes sending message
1s with a valid mac1 from 62 source addresses as fast as they can. After the flood's warm-up (one
pending-handshake timeout) a new client connects several times in a row (each from a fresh
process with its own key), and the gateway's CPU (% of one core, /proc/PID/stat) and memory (RSS,
/proc/PID/status) are sampled throughout. Prints ``key=value`` lines, among them
``flood_legit_connect_s`` (the median connect time); the raw output is kept in
bench/results/flood-<date>.txt.

The machine is shared: the load average before and after is printed with the figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from veilgate import fastpath
from veilgate.protocol.constants import PENDING_HANDSHAKE_TIMEOUT
from veilgate.testing import Topology, netns
from veilgate.testing.deploy import Deployment
from veilgate.testing.flood import measure_capacity
from veilgate.testing.floodrun import (
    FLOOD_SUBNET,
    FloodRun,
    pin_apart,
    process_cpu_seconds,
    process_rss_kib,
    udp_stats,
)

HERE = Path(__file__).resolve().parent
SOURCES = 62
WARMUP = PENDING_HANDSHAKE_TIMEOUT + 0.5
CONNECT_TIMEOUT = 20.0


class Sampler(threading.Thread):
    """Samples a process's CPU time and RSS every ``interval`` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float, int]] = []  # (monotonic, cpu seconds, rss KiB)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.samples.append(
                    (time.monotonic(), process_cpu_seconds(self.pid), process_rss_kib(self.pid))
                )
            except OSError:
                return
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def between(self, t0: float, t1: float) -> tuple[float, int]:
        """CPU in % of one core between t0 and t1, and the largest RSS seen then."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return float("nan"), 0
        (a, ca, _), (b, cb, _) = inside[0], inside[-1]
        return 100.0 * (cb - ca) / (b - a), max(s[2] for s in inside)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_times() -> dict[str, list[int]]:
    """Each CPU's jiffies from /proc/stat: user nice system idle iowait irq softirq steal."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            out[name] = [int(f) for f in fields[:8]]
    return out


def cpu_split(a: dict[str, list[int]], b: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Where each CPU's time went between two ``cpu_times`` (softirq: the kernel's packet work)."""
    names = ("user", "system", "softirq", "idle")
    index = {"user": 0, "system": 2, "softirq": 6, "idle": 3}
    out = {}
    for cpu, before in a.items():
        delta = [y - x for x, y in zip(before, b[cpu], strict=True)]
        total = sum(delta) or 1
        out[cpu] = {n: 100.0 * delta[index[n]] / total for n in names}
    return out


def connect_once(deploy: Deployment, name: str, ns: str, transports: list[str]) -> float | None:
    """Start a new client (a fresh key and credential), time its handshake, stop it.

    The transport it connected on goes to ``transports`` (a client falls back to TCP by itself
    when UDP gets no answer)."""
    deploy.make_client(name)
    deploy.start_client(name, ns=ns)  # its status socket is up as its handshake starts
    t0 = time.monotonic()
    took: float | None = None
    while time.monotonic() - t0 < CONNECT_TIMEOUT:
        try:
            st = deploy.client_status(name)
        except OSError:
            st = {}
        if st.get("connected") and st.get("ipv4"):
            took = time.monotonic() - t0
            transports.append(str(st.get("transport")))
            break
        time.sleep(0.05)
    deploy.stop_client(name)
    return took


def scenario(
    work: Path, data_path: str, args: argparse.Namespace, handshake_us: float, out: list[str]
) -> None:
    def say(line: str) -> None:
        print(line, flush=True)
        out.append(line)

    os.environ[fastpath.ENV] = "1" if data_path == "compiled" else "0"
    say(f"# data path: {data_path}; pinned apart: {args.pin}; load average before: {loadavg()}")
    with Topology() as topo:
        deploy = Deployment(topo, work / data_path)
        gateway = deploy.start_gateway()
        flooder = topo.add_host("f", FLOOD_SUBNET, addresses=SOURCES)
        ns2, _ = topo.add_client(2)
        deploy.make_client("c1", rekey_after=5.0)  # it rekeys every 5 s, also during the flood
        deploy.start_client("c1")
        deploy.wait_client("c1")
        assert gateway.pid is not None
        sampler = Sampler(gateway.pid)
        sampler.start()
        time.sleep(2)
        idle_cpu, idle_rss = sampler.between(time.monotonic() - 2.5, time.monotonic())
        say(f"gateway_idle_cpu_percent={idle_cpu:.1f} gateway_idle_rss_kib={idle_rss}")

        per = -(-SOURCES // args.processes)
        floods = [
            FloodRun(
                topo,
                flooder,
                (netns.GATEWAY_V4, deploy.udp_port),
                deploy.gateway_key.public,
                args.rate / args.processes,
                600.0,
                sources=flooder.sources[k * per : (k + 1) * per],
            )
            for k in range(args.processes)
        ]
        started = max(f.wait_started() for f in floods)
        if args.pin:
            for f in floods:
                pin_apart(f.proc.pid, gateway.pid)
        time.sleep(WARMUP)
        udp0, status0, t0 = udp_stats(topo, topo.gateway), deploy.gateway_status(), time.monotonic()
        cpus0 = cpu_times()
        count = max(10, int(args.connects * 4 / 0.2))
        pinger = topo.spawn(
            topo.client,
            *("ping", "-4", "-n", "-i", "0.2", "-c", str(count), "-W", "1", netns.INTERNET_V4),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        transports: list[str] = []
        connects = [connect_once(deploy, f"n{k}", ns2, transports) for k in range(args.connects)]
        t1 = time.monotonic()
        udp1, status1 = udp_stats(topo, topo.gateway), deploy.gateway_status()
        cpus1 = cpu_times()
        c1 = deploy.client_status("c1")
        if pinger.poll() is None:
            pinger.send_signal(signal.SIGINT)  # ping prints its summary on SIGINT
        ping_out = pinger.communicate(timeout=30)[0]
        reports = [f.report() for f in floods]
        sampler.stop()
        cpu, rss = sampler.between(t0, t1)
        warm_cpu, warm_rss = sampler.between(started, t0)

        ok = [c for c in connects if c is not None]
        span = t1 - t0
        counters0, counters1 = status0["counters"], status1["counters"]

        def rate_of(key: str) -> float:
            return float(counters1.get(key, 0) - counters0.get(key, 0)) / span

        answered = rate_of("cookie-sent") + rate_of("handshake-responses")
        loss = next((line for line in ping_out.splitlines() if "packet loss" in line), "no ping summary")
        rtt = next((line for line in ping_out.splitlines() if line.startswith("rtt")), "")
        say(f"flood_legit_connect_s={statistics.median(ok):.2f}" if ok else "flood_legit_connect_s=none")
        say(f"flood_legit_connects={json.dumps([None if c is None else round(c, 2) for c in connects])}")
        say(f"flood_legit_connect_failures={len(connects) - len(ok)} (none within {CONNECT_TIMEOUT:g} s)")
        say(f"flood_legit_connect_transports={','.join(transports)}")
        say(f"flood_rate={sum(r.rate for r in reports):.0f} (datagrams/s sent, {args.processes} process(es))")
        say(f"flood_target={'unpaced' if not args.rate else f'{args.rate:.0f}'}")
        say(
            f"flood_sent={sum(r.sent for r in reports)} flood_send_errors={sum(r.send_errors for r in reports)}"
        )
        say(f"gateway_cpu_percent={cpu:.1f} (during the connects; {warm_cpu:.1f} in the warm-up)")
        say(
            f"gateway_rss_kib={rss} (largest during the connects; {warm_rss} in the warm-up, {idle_rss} idle)"
        )
        say(f"gateway_socket_drops_per_s={(udp1['RcvbufErrors'] - udp0['RcvbufErrors']) / span:.0f}")
        say(f"gateway_datagrams_in_per_s={(udp1['InDatagrams'] - udp0['InDatagrams']) / span:.0f}")
        say(f"gateway_cookie_replies_per_s={rate_of('cookie-sent'):.0f}")
        say(f"gateway_handshake_responses_per_s={rate_of('handshake-responses'):.0f}")
        if answered > 0 and cpu == cpu:
            say(
                f"gateway_cpu_us_per_message1={cpu / 100 / answered * 1e6:.1f} (daemon CPU per message 1 answered)"
            )
        cookies = rate_of("cookie-sent")
        if cookies > 0 and cpu == cpu:
            rest = cpu / 100 - rate_of("handshake-responses") * handshake_us / 1e6
            say(
                f"gateway_cpu_us_per_cookie_reply_est={rest / cookies * 1e6:.1f} (less the handshakes at core cost)"
            )
        say(f"gateway_pending_handshakes={status1['pending_handshakes']}")
        say(f"gateway_refused_pending_full={counters1.get('drop-pending-full', 0)}")
        say(f"established_rekeys_during={counters1.get('rekeys', 0) - counters0.get('rekeys', 0)}")
        say(f"established_connected={c1.get('connected')} on {c1.get('transport')}; ping: {loss}; {rtt}")
        for cpu_name, split in cpu_split(cpus0, cpus1).items():
            say(f"{cpu_name}: " + " ".join(f"{k}={v:.0f}%" for k, v in split.items()))
        say(f"# load average after: {loadavg()}")
        for name in list(deploy.clients):
            deploy.stop_client(name)
        deploy.stop_gateway()


def sweep(work: Path, data_path: str, rates: list[float], seconds: float, pin: bool, out: list[str]) -> None:
    """Paced floods at each rate in turn: where does the gateway stop keeping up?"""

    def say(line: str) -> None:
        print(line, flush=True)
        out.append(line)

    os.environ[fastpath.ENV] = "1" if data_path == "compiled" else "0"
    say(f"# sweep, data path: {data_path}; pinned apart: {pin}; load average before: {loadavg()}")
    say("#  rate_sent  gw_cpu%  in/s  socket_drops/s  cookie_replies/s  responses/s")
    with Topology() as topo:
        deploy = Deployment(topo, work / f"sweep-{data_path}")
        gateway = deploy.start_gateway()
        flooder = topo.add_host("f", FLOOD_SUBNET, addresses=SOURCES)
        assert gateway.pid is not None
        for rate in rates:
            flood = FloodRun(
                topo,
                flooder,
                (netns.GATEWAY_V4, deploy.udp_port),
                deploy.gateway_key.public,
                rate,
                seconds + 2,
            )
            flood.wait_started()
            if pin:
                pin_apart(flood.proc.pid, gateway.pid)
            time.sleep(1)
            u0, s0 = udp_stats(topo, topo.gateway), deploy.gateway_status()["counters"]
            c0, t0 = process_cpu_seconds(gateway.pid), time.monotonic()
            time.sleep(seconds)
            u1, s1 = udp_stats(topo, topo.gateway), deploy.gateway_status()["counters"]
            c1, t1 = process_cpu_seconds(gateway.pid), time.monotonic()
            report = flood.report()
            span = t1 - t0
            say(
                f"{report.rate:10.0f} {100 * (c1 - c0) / span:8.0f} "
                f"{(u1['InDatagrams'] - u0['InDatagrams']) / span:6.0f} "
                f"{(u1['RcvbufErrors'] - u0['RcvbufErrors']) / span:14.0f} "
                f"{(s1.get('cookie-sent', 0) - s0.get('cookie-sent', 0)) / span:17.0f} "
                f"{(s1.get('handshake-responses', 0) - s0.get('handshake-responses', 0)) / span:12.0f}"
            )
            time.sleep(PENDING_HANDSHAKE_TIMEOUT + 0.5)  # the flood's pending handshakes expire
        deploy.stop_gateway()
    say(f"# load average after: {loadavg()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--rate", type=float, default=0.0, help="total datagrams/s; 0 (default): as fast as they can"
    )
    ap.add_argument("--processes", type=int, default=1, help="flooder processes (the machine has 2 cores)")
    ap.add_argument("--connects", type=int, default=5, help="new clients connected in a row during the flood")
    ap.add_argument("--data-path", choices=("compiled", "python", "both"), default="both")
    ap.add_argument(
        "--sweep",
        type=lambda text: [float(r) for r in text.split(",")],
        help="instead: paced floods at these rates (comma-separated), each for --sweep-seconds",
    )
    ap.add_argument("--sweep-seconds", type=float, default=6.0)
    ap.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let the flooders and the gateway share CPUs (default: flooders on the first, gateway on the last)",
    )
    ap.add_argument("--results", type=Path, default=HERE / "results", help="where the raw output is kept")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the flood benchmark needs root (network namespaces)", file=sys.stderr)
        return 2
    if not 1 <= args.processes <= 8 or not 1 <= args.connects <= 50:
        ap.error("--processes is 1 to 8 and --connects 1 to 50")
    out: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        out.append(line)

    now = datetime.datetime.now(datetime.UTC)
    say(f"# make bench-flood, {now:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs")
    cap = measure_capacity()
    say(f"handshake_capacity_per_s={cap.handshakes_per_second:.0f} (message 1 -> message 2, core alone)")
    say(f"handshake_us={cap.handshake_us:.1f} cookie_reply_us={cap.cookie_reply_us:.1f} (core alone)")
    paths = ["compiled", "python"] if args.data_path == "both" else [args.data_path]
    if "compiled" in paths and not fastpath.BUILT:
        say("# the compiled data path is not built: python only")
        paths = ["python"]
    with tempfile.TemporaryDirectory(prefix="vgflood-") as tmp:
        for path in paths:
            if args.sweep:
                sweep(Path(tmp), path, args.sweep, args.sweep_seconds, args.pin, out)
            else:
                scenario(Path(tmp), path, args, cap.handshake_us, out)
    args.results.mkdir(parents=True, exist_ok=True)
    dest = args.results / f"flood-{now:%Y-%m-%d}.txt"
    with dest.open("a") as f:
        f.write("\n".join(out) + "\n\n")
    print(f"# raw output appended to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
