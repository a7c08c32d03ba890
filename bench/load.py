"""Many clients in one process: a load generator for a veilgate gateway.

Each session is the sans-IO client core (``veilgate.protocol.client.ClientProtocol``) with the
compiled keys of ``veilgate.fastpath`` (the pure-Python ones where the module is not built) and
its own UDP or TCP socket; one selector serves them all. It needs no TUN: the IP packets a
session sends are made here (UDP to a sink on the internet host), those it receives are counted.
It talks to whatever listens at the gateway's address, whatever runs it.

``load.py run …`` is the generator itself (run it in the namespace the clients live in);
``load.py sink …`` counts the UDP bytes it receives per source address and prints them as JSON
when stopped; ``load.py bench`` builds namespaces, a provider and a gateway daemon
(``veilgate.testing``), pre-generates blind-RSA credentials from the provider's epoch key
(before anything is timed), pins the generator and the gateway to different CPUs, and runs the
scenarios of docs/performance.md ("Many clients"). Run as root; not a test.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import json
import os
import resource
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veilgate import fastpath
from veilgate.protocol.client import ClientProtocol
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.events import ConfigReceived
from veilgate.protocol.keypair import Keypair, KeypairFactory
from veilgate.transport.framing import FrameDecoder, encode_frame

ROOT = Path(__file__).resolve().parents[1]
SINK_PORT = 7009


def keypair_factory() -> KeypairFactory:
    if fastpath.BUILT:
        from veilgate.fastpath.keypair import CompiledKeypair

        return CompiledKeypair
    return Keypair


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet (UDP checksum 0, allowed over IPv4)."""
    total = 28 + len(payload)
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    s = sum(struct.unpack("!10H", head))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    head = head[:10] + struct.pack("!H", ~s & 0xFFFF) + head[12:]
    return head + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


@dataclass
class Session:
    index: int
    core: ClientProtocol
    sock: socket.socket
    tcp: bool
    decoder: FrameDecoder | None = None
    pending: bytearray = field(default_factory=bytearray)
    address: str | None = None
    started: float = 0.0
    ready_at: float | None = None
    received: int = 0
    packet: bytes = b""

    def flush(self) -> None:
        data = self.core.datagrams_to_send()
        if self.tcp:
            for d in data:
                self.pending += encode_frame(d)
            self._write()
        else:
            for d in data:
                with contextlib.suppress(OSError):
                    self.sock.send(d)

    def send(self, datagram: bytes) -> None:
        if self.tcp:
            self.pending += encode_frame(datagram)
            self._write()
        else:
            with contextlib.suppress(OSError):
                self.sock.send(datagram)

    def _write(self) -> None:
        while self.pending:
            try:
                n = self.sock.send(self.pending)
            except (BlockingIOError, OSError):
                return
            del self.pending[:n]

    def on_readable(self, now: float) -> None:
        for _ in range(64):
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            frames = self.decoder.feed(data) if self.decoder is not None else [data]
            for frame in frames:
                if self.core.receive_datagram(frame, now) is not None:
                    self.received += 1
            if self.tcp:
                break
        while (event := self.core.next_event()) is not None:
            if isinstance(event, ConfigReceived) and event.config.ipv4 is not None:
                self.address = str(event.config.ipv4.ip)
                if self.ready_at is None:
                    self.ready_at = now
        self.flush()


class LoadGen:
    """Many sessions against one gateway, one selector."""

    def __init__(
        self,
        gateway: tuple[str, int],
        gateway_public: bytes,
        transport: str = "udp",
        tcp_port: int = 0,
        sources: list[str] | None = None,
    ) -> None:
        self.gateway = gateway
        self.sources = sources or []
        """Source addresses the sessions' sockets bind to, in turn: a gateway rate-limits handshakes
        per source address, as clients behind one address would be."""
        self.gateway_public = gateway_public
        self.transport = transport
        self.tcp_port = tcp_port
        self.sel = selectors.DefaultSelector()
        self.sessions: list[Session] = []
        self.factory = keypair_factory()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 65536), max(hard, 65536)))

    def add(self, key: KeyPair, credential: bytes) -> Session:
        tcp = self.transport == "tcp"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        sock.setblocking(False)
        if self.sources:
            sock.bind((self.sources[len(self.sessions) % len(self.sources)], 0))
        if tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(BlockingIOError):
                sock.connect((self.gateway[0], self.tcp_port))
        else:
            sock.connect(self.gateway)
        core = ClientProtocol(key, self.gateway_public, credential, new_keypair=self.factory)
        s = Session(len(self.sessions), core, sock, tcp, FrameDecoder() if tcp else None)
        self.sessions.append(s)
        self.sel.register(sock, selectors.EVENT_READ, s)
        return s

    def start(self, sessions: list[Session]) -> None:
        now = time.monotonic()
        for s in sessions:
            s.started = now
            s.core.connect(now)
            s.flush()

    def poll(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            session: Session = key.data
            session.on_readable(time.monotonic())

    def timers(self, sessions: list[Session]) -> None:
        now = time.monotonic()
        for s in sessions:
            t = s.core.get_timer()
            if t is not None and t <= now:
                s.core.handle_timer(now)
                s.flush()

    def run_until(self, done: Callable[[], bool], timeout: float, sessions: list[Session]) -> bool:
        deadline = time.monotonic() + timeout
        next_timers = 0.0
        while not done():
            now = time.monotonic()
            if now >= deadline:
                return False
            if now >= next_timers:
                self.timers(sessions)
                next_timers = now + 0.05
            self.poll(0.01)
        return True

    def connect(self, sessions: list[Session], timeout: float, window: int = 0) -> bool:
        """Start the sessions (all at once, or at most ``window`` handshakes in flight) and wait
        until each has its tunnel address."""
        if not window:
            self.start(sessions)
            return self.run_until(lambda: all(s.address for s in sessions), timeout, sessions)
        todo = list(reversed(sessions))
        flight: list[Session] = []

        def step() -> bool:
            flight[:] = [s for s in flight if not s.address]
            while todo and len(flight) < window:
                s = todo.pop()
                self.start([s])
                flight.append(s)
            return not todo and not flight

        return self.run_until(step, timeout, sessions)

    def blast(
        self,
        sessions: list[Session],
        seconds: float,
        dst: str,
        rate: float = 0.0,
        serve: list[Session] | None = None,
    ) -> int:
        """Send IP packets (1,200 bytes of UDP to ``dst``) round-robin from the sessions for
        ``seconds``, as fast as possible or at ``rate`` packets per second; returns how many. The
        timers of ``serve`` (default: the sessions) run meanwhile, e.g. idle sessions' keepalives."""
        payload = bytes(1172)
        for s in sessions:
            assert s.address is not None
            s.packet = udp_packet(s.address, dst, 40000 + s.index % 20000, SINK_PORT, payload)
        sent = 0
        cursor = 0
        n = len(sessions)
        start = time.monotonic()
        end = start + seconds
        next_timers = start
        while (now := time.monotonic()) < end:
            due = int((now - start) * rate) - sent if rate else n
            if due <= 0:
                self.poll(0.0005)
                continue
            for _ in range(min(due, n)):
                s = sessions[cursor]
                cursor = (cursor + 1) % n
                d = s.core.send_packet(s.packet, now)
                if d is not None:
                    s.send(d)
                    sent += 1
            if now >= next_timers:
                self.poll(0.0)
                self.timers(serve if serve is not None else sessions)
                next_timers = now + 0.05
        return sent

    def close(self) -> None:
        now = time.monotonic()
        for s in self.sessions:
            bye = s.core.close(now)
            if bye is not None:
                s.send(bye)
            self.sel.unregister(s.sock)
            s.sock.close()
        self.sessions.clear()


# ---------------------------------------------------------------- credentials file


def write_credentials(path: Path, items: list[tuple[bytes, bytes]]) -> None:
    path.write_text(
        "\n".join(f"{base64.b64encode(k).decode()} {base64.b64encode(c).decode()}" for k, c in items)
    )


def read_credentials(path: Path) -> list[tuple[KeyPair, bytes]]:
    out = []
    for line in path.read_text().splitlines():
        k, c = line.split()
        out.append((KeyPair.from_private_bytes(base64.b64decode(k)), base64.b64decode(c)))
    return out


def blind_credentials(state_dir: Path, epoch_length: int, n: int) -> list[tuple[bytes, bytes]]:
    """``n`` keys with blind-RSA credentials of the current epoch, signed with the provider's epoch
    key from its state folder: the RFC 9474 steps a provider client and the provider's issuer make
    (``CredentialRequest``, ``sign_blinded``), without the HTTPS round trips."""
    from veilgate.credentials.blindrsa import BlindRSAPrivateKey
    from veilgate.credentials.epochs import CredentialRequest, EpochKey, epoch_of, sign_blinded

    epoch = epoch_of(time.time(), epoch_length)
    key = EpochKey(epoch, BlindRSAPrivateKey.from_der((state_dir / "epochs" / f"{epoch}.der").read_bytes()))
    out = []
    for _ in range(n):
        static = KeyPair.generate()
        req = CredentialRequest(key.public, static.public)
        out.append((static.private_bytes(), req.finalize(sign_blinded(key, req.blinded)).encode()))
    return out


# ---------------------------------------------------------------- measuring the gateway


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """CPU seconds so far of a process and its live descendants (a gateway's workers): (user, kernel)."""
    tick = os.sysconf("SC_CLK_TCK")
    user = kernel = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / tick
        kernel += int(fields[12]) / tick
    return user, kernel


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in map(int, children):
        out += [child, *descendants(child)]
    return out


def gateway_datagrams(sessions: list[Session]) -> int:
    """Authenticated datagrams the sessions had from the gateway other than IP packets: with traffic
    only towards the sink, the gateway's passive keepalives (and a control message per rekey)."""
    return sum(s.core.authenticated_rx - s.received for s in sessions)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def jain(xs: list[float]) -> float:
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)) if xs and any(xs) else 0.0


@contextlib.contextmanager
def sink(netns: str | None, cpu: str) -> Iterator[Callable[[], dict[str, int]]]:
    """A UDP sink on the internet host; yields a function that stops it and returns bytes per source."""
    cmd = ["taskset", "-c", cpu, sys.executable, __file__, "sink", "--port", str(SINK_PORT)]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    time.sleep(0.4)
    result: dict[str, int] = {}

    def stop() -> dict[str, int]:
        if proc.poll() is None:
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=10)
            result.update(json.loads(out or "{}"))
        return result

    try:
        yield stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_sink(port: int) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", port))
    counts: dict[str, int] = {}
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock.settimeout(0.1)
    while not stop:
        try:
            data, addr = sock.recvfrom(65535)
        except (TimeoutError, InterruptedError):
            continue
        counts[addr[0]] = counts.get(addr[0], 0) + len(data)
    print(json.dumps(counts))
    return 0


# ---------------------------------------------------------------- scenarios (run in the clients' namespace)


def scenario(args: argparse.Namespace) -> dict[str, Any]:
    creds = read_credentials(Path(args.credentials))
    host, port = args.gateway.rsplit(":", 1)
    sources = []
    if args.sources:
        first, count = args.sources.split("+")
        sources = [str(ipaddress.IPv4Address(first) + i) for i in range(int(count))]
    gen = LoadGen(
        (host, int(port)), base64.b64decode(args.gateway_key), args.transport, args.tcp_port, sources
    )
    pid = args.gateway_pid
    res: dict[str, Any] = {"scenario": args.scenario, "transport": args.transport}
    try:
        if args.scenario == "storm":
            sessions = [gen.add(k, c) for k, c in creds[: args.sessions]]
            c0, t0 = cpu_seconds(pid), time.monotonic()
            ok = gen.connect(sessions, args.timeout)
            res["all_connected"] = ok
            times = sorted(s.ready_at - s.started for s in sessions if s.ready_at is not None)
            res["connected"] = len(times)
            res["seconds_until_all"] = times[-1] if ok else None
            res["median_s"] = statistics.median(times) if times else None
            res["gateway_cpu_s"] = cpu_seconds(pid) - c0
            res["wall_s"] = time.monotonic() - t0
            res["handshakes_per_gateway_cpu_s"] = len(times) / max(res["gateway_cpu_s"], 1e-9)
            res["cookie_replies"] = sum(s.core.counters["cookie-replies"] for s in sessions)
        elif args.scenario == "rate":
            sessions = [gen.add(k, c) for k, c in creds[: args.sessions]]
            (u0, k0), t0 = cpu_split(pid), time.monotonic()
            ok = gen.connect(sessions, args.timeout, window=args.window)
            n = sum(1 for s in sessions if s.address)
            u1, k1 = cpu_split(pid)
            res.update(
                connected=n,
                all_connected=ok,
                wall_s=time.monotonic() - t0,
                gateway_cpu_s=u1 + k1 - u0 - k0,
                gateway_cpu_kernel_s=k1 - k0,
                cookie_replies=sum(s.core.counters["cookie-replies"] for s in sessions),
            )
            res["handshakes_per_gateway_cpu_s"] = n / max(res["gateway_cpu_s"], 1e-9)
            res["handshakes_per_s_wall"] = n / res["wall_s"]
        elif args.scenario == "fair":
            sessions = [gen.add(k, c) for k, c in creds[: args.sessions]]
            res["all_connected"] = gen.connect(sessions, args.timeout, window=64)
            for label, group in (("one", sessions[:1]), ("all", sessions)):
                with sink(args.sink_ns, args.sink_cpu) as stop:
                    c0 = cpu_seconds(pid)
                    sent = gen.blast(group, args.seconds, args.sink)
                    gen.run_until(lambda: False, 0.3, sessions)
                    counts = stop()
                    cpu = cpu_seconds(pid) - c0
                per = [float(counts.get(s.address or "", 0)) for s in group]
                res[label] = {
                    "sessions": len(group),
                    "sent_packets": sent,
                    "delivered_mbit_s": sum(per) * 8 / args.seconds / 1e6,
                    "jain": jain(per),
                    "min_max_mbit_s": [min(per) * 8 / args.seconds / 1e6, max(per) * 8 / args.seconds / 1e6],
                    "gateway_cpu_pct": 100 * cpu / args.seconds,
                }
        elif args.scenario == "scale":
            base = rss_kib(pid)
            res["rss_idle_kib"] = base
            res["steps"] = []
            live: list[Session] = []
            for n in [int(x) for x in args.steps.split(",")]:
                more = [gen.add(k, c) for k, c in creds[len(live) : n]]
                t0 = time.monotonic()
                ok = gen.connect(more, args.timeout, window=args.window)
                live += more
                connect_s = time.monotonic() - t0
                gen.run_until(lambda: False, 1.0, live)  # let the gateway settle
                rss = rss_kib(pid)
                c0, t0 = cpu_seconds(pid), time.monotonic()
                gen.run_until(lambda: False, args.seconds, live)  # no traffic: the keepalives only
                idle_rate = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
                step: dict[str, Any] = {
                    "sessions": len(live),
                    "connected": sum(1 for s in live if s.address),
                    "all_connected": ok,
                    "connect_s": connect_s,
                    "rss_kib": rss,
                    "kib_per_session": (rss - base) / len(live),
                    "gateway_idle_cpu_pct": 100 * idle_rate,
                }
                for label, senders in (("few", live[: args.senders]), ("all", live)):
                    with sink(args.sink_ns, args.sink_cpu) as stop:
                        before = gateway_datagrams(live)
                        c0, t0 = cpu_seconds(pid), time.monotonic()
                        sent = gen.blast(senders, args.seconds, args.sink, rate=args.rate, serve=live)
                        gen.run_until(lambda: False, 0.3, live)
                        delivered = sum(stop().values()) // 1200
                        cpu, wall = cpu_seconds(pid) - c0, time.monotonic() - t0
                    keepalives = gateway_datagrams(live) - before
                    step[label] = {
                        "senders": len(senders),
                        "sent": sent,
                        "delivered": delivered,
                        "gateway_cpu_us_per_packet": 1e6 * cpu / max(delivered, 1),
                        "gateway_cpu_us_per_packet_less_idle": 1e6
                        * (cpu - idle_rate * wall)
                        / max(delivered, 1),
                        "keepalives_per_packet": keepalives / max(delivered, 1),
                    }
                res["steps"].append(step)
                print(json.dumps(step), file=sys.stderr, flush=True)
        res["loadgen"] = "compiled keys" if fastpath.BUILT else "pure-Python keys"
    finally:
        gen.close()
    return res


# ---------------------------------------------------------------- the bench: namespaces, provider, gateway


def bench(args: argparse.Namespace) -> int:
    from veilgate.testing import netns
    from veilgate.testing.deploy import Deployment

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean the namespaces up when stopped
    cpus = sorted(os.sched_getaffinity(0))
    gen_cpu, gw_cpu = str(cpus[0]), str(cpus[-1])
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="vgload-"))
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    only = set(args.only.split(",")) if args.only else {"storm", "rate", "fair", "workers", "scale"}
    need = max(
        args.storm if "storm" in only else 0,
        args.rate_count if "rate" in only else 0,
        args.sessions[-1] if "scale" in only else 0,
        args.fair if "fair" in only or "workers" in only else 0,
        args.rate_count if "workers" in only else 0,
    )
    say(
        f"# bench/load.py: load generator pinned to CPU {gen_cpu}, gateway daemon to CPU {gw_cpu} "
        f"(taskset); {'compiled' if fastpath.BUILT else 'pure-Python'} keys in the generator; UDP sessions "
        "from 250 source addresses behind the router"
    )
    with tempfile.TemporaryDirectory(prefix="vgload-") as tmp, netns.Topology() as topo:
        host = topo.add_host("load", 20, addresses=250)
        dep = Deployment(
            topo, Path(tmp), veilgate=["taskset", "-c", gw_cpu, sys.executable, "-m", "veilgate"]
        )
        dep.start_provider(epoch_length=86400)
        t0 = time.monotonic()
        creds = blind_credentials(Path(tmp) / "provider-state", 86400, need)
        write_credentials(Path(tmp) / "creds.txt", creds)
        say(
            f"# {need} blind-RSA credentials pre-generated from the provider's epoch key in {time.monotonic() - t0:.0f} s (not timed)"
        )

        plain = dep.veilgate

        def run(name: str, gw: dict[str, Any], gw_cpus: str | None = None, **kw: object) -> dict[str, Any]:
            if gw_cpus is not None:  # this run's gateway on other CPUs (its workers on all of them)
                dep.veilgate = ["taskset", "-c", gw_cpus, *plain[3:]]
            if args.profile_gateway:  # the gateway under cProfile, one file per run
                folder = Path(args.profile_gateway).resolve()
                folder.mkdir(parents=True, exist_ok=True)
                prof = folder / f"{name}-{len(list(folder.glob(name + '-*.prof')))}.prof"
                dep.veilgate = [*plain[:-2], "-m", "cProfile", "-o", str(prof), "-m", "veilgate"]
            try:
                proc = dep.start_gateway(**gw)
            finally:
                dep.veilgate = plain
            time.sleep(1.0)  # the gateway fetches the provider's epoch keys
            try:
                cmd = [
                    "taskset", "-c", gen_cpu, sys.executable, __file__, "run", name,
                    "--gateway", f"{netns.GATEWAY_V4}:{dep.udp_port}", "--tcp-port", str(dep.tcp_port),
                    "--gateway-key", base64.b64encode(dep.gateway_public()).decode(),
                    "--gateway-pid", str(gateway_pid(proc.pid)), "--credentials", str(Path(tmp) / "creds.txt"),
                    "--sink", netns.INTERNET_V4, "--sink-ns", topo.internet, "--sink-cpu", gen_cpu,
                    "--sources", f"{host.v4}+{len(host.sources)}",
                ]  # fmt: skip
                for k, v in kw.items():
                    cmd += [f"--{k.replace('_', '-')}", str(v)]
                r = topo.ns_run(host.ns, *cmd, timeout=3600)
                (out / f"{name}-{len(list(out.glob(name + '-*.json')))}.json").write_text(r.stdout)
                return dict(json.loads(r.stdout))
            finally:
                dep.stop_gateway()

        if "storm" in only:
            for transport in ("udp", "tcp"):
                storm = run("storm", {}, sessions=args.storm, timeout=60, transport=transport)
                say(
                    f"handshake storm over {transport}: {storm['connected']} of {args.storm} clients at once, all "
                    f"with an address after {storm['seconds_until_all'] or float('nan'):.2f} s (median "
                    f"{storm['median_s'] or float('nan'):.2f} s), {storm['cookie_replies']} cookie replies; goal < 2 s"
                )
        if "rate" in only:
            for label, threshold in (("off", 100_000_000), ("on", 0)):
                r = run(
                    "rate", {"cookie_threshold": threshold}, sessions=args.rate_count, window=32, timeout=120
                )
                say(
                    f"gateway handshakes, cookies {label}: {r['handshakes_per_gateway_cpu_s']:.0f} per second of gateway CPU "
                    f"({r['connected']} handshakes, {r['gateway_cpu_s']:.2f} s CPU of which {r['gateway_cpu_kernel_s']:.2f} s in the kernel, "
                    f"{r['handshakes_per_s_wall']:.0f}/s wall, "
                    f"{r['cookie_replies']} cookie replies); goal >= 2000/core"
                )
        if "fair" in only:
            for transport in ("udp", "tcp"):
                fair = run(
                    "fair", {}, sessions=args.fair, seconds=args.seconds, timeout=120, transport=transport
                )
                say(
                    f"{args.fair} sessions sending at once over {transport}: {fair['all']['delivered_mbit_s']:.0f} "
                    f"Mbit/s delivered in all (one session alone: {fair['one']['delivered_mbit_s']:.0f}), Jain's "
                    f"fairness {fair['all']['jain']:.3f} (per session {fair['all']['min_max_mbit_s'][0]:.1f}–"
                    f"{fair['all']['min_max_mbit_s'][1]:.1f} Mbit/s); goal >= 0.9"
                )
        if "workers" in only:
            say(
                f"# workers: 1 worker pinned to CPU {gw_cpu}; {len(cpus)} workers on CPUs "
                f"{','.join(map(str, cpus))}, the generator (CPU {gen_cpu}) sharing one of them"
            )
            for n, where in ((1, gw_cpu), (len(cpus), ",".join(map(str, cpus)))):
                r = run(
                    "rate", {"cookie_threshold": 100_000_000, "workers": n}, where,
                    sessions=args.rate_count, window=32, timeout=120,
                )  # fmt: skip
                say(
                    f"{n} worker(s): {r['handshakes_per_s_wall']:.0f} handshakes/s wall, "
                    f"{r['handshakes_per_gateway_cpu_s']:.0f} per second of gateway CPU"
                )
                f = run("fair", {"workers": n}, where, sessions=args.fair, seconds=args.seconds, timeout=120)
                say(
                    f"{n} worker(s): {args.fair} sessions deliver {f['all']['delivered_mbit_s']:.0f} Mbit/s in all, "
                    f"Jain {f['all']['jain']:.3f}"
                )
        if "scale" in only:
            scale = run(
                "scale", {}, steps=",".join(map(str, args.sessions)), window=64, rate=args.rate, seconds=args.seconds,
                senders=args.senders, timeout=1200,
            )  # fmt: skip
            say(f"gateway RSS idle, no session: {scale['rss_idle_kib'] / 1024:.1f} MB")
            say(
                f"per packet: gateway CPU µs per delivered packet, {args.rate:.0f} packets/s for {args.seconds:g} s, less "
                "(after '/') the gateway's CPU with no traffic (idle column: the sessions' keepalives, each client's "
                "every 10 s and the gateway's answer) over the same time"
            )
            say(
                f"| sessions | connected | gateway RSS MB | KiB per session | idle CPU % | {args.senders} sending, rest idle: "
                "µs per packet / less idle | all sending in turn: sent / delivered | µs per packet / less idle "
                "| gateway keepalives per packet |"
            )
            say("|---|---|---|---|---|---|---|---|---|")
            for st in scale["steps"]:
                few, every = st["few"], st["all"]
                say(
                    f"| {st['sessions']} | {st['connected']} | {st['rss_kib'] / 1024:.1f} | {st['kib_per_session']:.1f} "
                    f"| {st['gateway_idle_cpu_pct']:.1f} "
                    f"| {few['gateway_cpu_us_per_packet']:.1f} / {few['gateway_cpu_us_per_packet_less_idle']:.1f} "
                    f"| {every['sent']} / {every['delivered']} "
                    f"| {every['gateway_cpu_us_per_packet']:.1f} / {every['gateway_cpu_us_per_packet_less_idle']:.1f} "
                    f"| {every['keepalives_per_packet']:.2f} |"
                )
            first, last = scale["steps"][0], scale["steps"][-1]

            def ratio(label: str, key: str) -> float:
                return float(last[label][key] / first[label][key])

            say(
                f"at {last['sessions']} sessions: RSS {last['rss_kib'] / 1024:.0f} MB (goal < 200 MB); per-packet cost less "
                f"idle, {args.senders} sending: {ratio('few', 'gateway_cpu_us_per_packet_less_idle'):.2f} x that at "
                f"{first['sessions']} (goal: 1); all sending in turn: {ratio('all', 'gateway_cpu_us_per_packet'):.2f} x, "
                f"with {last['all']['keepalives_per_packet']:.2f} passive keepalives per packet (each session's packet "
                "unanswered for 1 s is answered by one)"
            )
    (out / "load.txt").write_text("\n".join(lines) + "\n")
    return 0


def gateway_pid(wrapper: int) -> int:
    """The gateway's own pid under ``ip netns exec`` and ``taskset`` (both exec, so the same)."""
    return wrapper


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one scenario against a running gateway (in the clients' namespace)")
    r.add_argument("scenario", choices=("storm", "rate", "fair", "scale"))
    r.add_argument("--gateway", required=True, help="host:udp-port")
    r.add_argument("--tcp-port", type=int, default=8443)
    r.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    r.add_argument("--gateway-key", required=True, help="the gateway's public key, base64")
    r.add_argument("--gateway-pid", type=int, required=True)
    r.add_argument("--credentials", required=True, help="file: base64 private key and credential per line")
    r.add_argument("--sessions", type=int, default=100)
    r.add_argument("--steps", default="1,100,1000,10000")
    r.add_argument("--window", type=int, default=32)
    r.add_argument("--seconds", type=float, default=3.0)
    r.add_argument("--rate", type=float, default=5000.0)
    r.add_argument("--senders", type=int, default=1, help="scale: sessions sending while the rest idle")
    r.add_argument("--timeout", type=float, default=60.0)
    r.add_argument("--sink", default="")
    r.add_argument("--sink-ns", default="")
    r.add_argument("--sink-cpu", default="0")
    r.add_argument("--sources", default="", help="FIRST+COUNT: bind the sessions to these addresses in turn")
    s = sub.add_parser("sink", help="count UDP bytes per source until SIGTERM, print JSON")
    s.add_argument("--port", type=int, default=SINK_PORT)
    b = sub.add_parser("bench", help="the scenarios of `make bench` in namespaces of their own")
    b.add_argument("--storm", type=int, default=1000)
    b.add_argument("--rate-count", type=int, default=2000)
    b.add_argument("--fair", type=int, default=100)
    b.add_argument("--sessions", type=lambda v: [int(x) for x in v.split(",")], default=[1, 100, 1000, 10000])
    b.add_argument("--seconds", type=float, default=3.0)
    b.add_argument(
        "--rate", type=float, default=5000.0, help="packets per second in the per-packet cost steps"
    )
    b.add_argument(
        "--senders",
        type=int,
        default=1,
        help="sessions sending in the per-packet cost steps while the rest idle",
    )
    b.add_argument("--out", default="", help="folder for the raw JSON of each scenario")
    b.add_argument(
        "--profile-gateway",
        default="",
        metavar="DIR",
        help="run the gateway daemon under cProfile; a .prof file per scenario run in DIR",
    )
    b.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios to run (storm, rate, fair, workers, scale); default: all",
    )
    args = ap.parse_args(argv)
    if args.cmd == "sink":
        return run_sink(args.port)
    if args.cmd == "run":
        print(json.dumps(scenario(args)))
        return 0
    return bench(args)


if __name__ == "__main__":
    raise SystemExit(main())
