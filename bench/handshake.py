"""The gateway daemon's CPU per handshake, in one process, without namespaces: the handshake
scenario of ``bench/load.py`` (provider mode, blind-RSA epoch credentials) on a ``Gateway``
driver object that is built but not started.

Each client is the sans-IO client core (``ClientProtocol``) with a blind-RSA credential of the
current epoch; its messages go to the gateway core as the daemon hands them over, followed by the
daemon's pump (events, address assignment, CONFIG, the session table and, where built, the
compiled path's peers). Replies really leave a UDP socket on loopback. Only the gateway's side is
timed. ``--cookies`` answers every message 1 with a cookie reply first (``cookie_threshold = 0``);
``--profile`` prints where the gateway's time goes (cProfile).

Not a test: it prints figures. ``.venv/bin/python bench/handshake.py [--cookies] [--profile]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import io
import ipaddress
import os
import pstats
import socket
import statistics
import tempfile
import time
from pathlib import Path

from veilgate import fastpath
from veilgate.credentials.blindrsa import BlindRSAPrivateKey
from veilgate.credentials.epochs import (
    DEFAULT_EPOCH_LENGTH,
    CredentialRequest,
    EpochKey,
    epoch_of,
    sign_blinded,
)
from veilgate.driver import Runtime
from veilgate.gateway.compiled import CompiledGateway
from veilgate.gateway.config import GatewayConfig
from veilgate.gateway.daemon import Gateway
from veilgate.gateway.listeners import UdpSocket
from veilgate.monitor import logs
from veilgate.protocol.client import ClientProtocol
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.events import ConfigReceived
from veilgate.protocol.keypair import KeypairFactory

SOURCES = 250
"""Client addresses in 127.0.0.0/8, as the load generator's 250 source addresses."""


def credentials(n: int, epoch_key: EpochKey) -> list[tuple[KeyPair, bytes]]:
    out = []
    for _ in range(n):
        static = KeyPair.generate()
        req = CredentialRequest(epoch_key.public, static.public)
        out.append((static, req.finalize(sign_blinded(epoch_key, req.blinded)).encode()))
    return out


class Bench:
    def __init__(self, epoch_key: EpochKey, cookies: bool, compiled: bool) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="vghs-")
        config = GatewayConfig(
            private_key=KeyPair.generate().private_bytes(),
            issuer_public_keys=[],
            listen="127.0.0.1",
            listen6=None,
            pool_v4=ipaddress.IPv4Network("10.201.0.0/16"),
            pool_v6=ipaddress.IPv6Network("fd7a:201::/64"),
            status_socket=Path(self.tmp.name) / "gw.sock",
            cookie_threshold=0 if cookies else 100_000_000,
            provider_url="https://provider.invalid/",
            provider_fingerprint="00" * 32,
        )
        environ = {fastpath.ENV: "1" if compiled else "0"}
        self.gateway = gw = Gateway(config, Runtime(environ=environ))
        gw.epochs.update([epoch_key.public])
        self._loop = asyncio.new_event_loop()
        gw._loop = self._loop  # arm_timer schedules on it; it never runs
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("0.0.0.0", 0))
        self.sink.setblocking(False)
        self.port = self.sink.getsockname()[1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        self.udp = UdpSocket(sock, offload=False)
        gw.listeners.udp.append(self.udp)
        if compiled and gw.compiled_wanted:
            self._tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            gw.fast = CompiledGateway(self._tun[0].fileno(), gw.table, gw.listeners, gw.core, False)
            self.udp.number = gw.fast.path.add_socket(sock.fileno(), False, False)
        self.new_keypair: KeypairFactory = gw.core.new_keypair

    def received(self) -> list[bytes]:
        """What the gateway sent (to one client at a time; loopback delivers at once)."""
        out = []
        while True:
            try:
                out.append(self.sink.recv(65536))
            except BlockingIOError:
                return out

    def run(
        self, clients: list[tuple[KeyPair, bytes]], base: int, profiler: cProfile.Profile | None = None
    ) -> float:
        """Connect every client; the gateway's seconds (as the daemon spends them) in all."""
        gw = self.gateway
        core = gw.core
        clock = time.thread_time  # CPU time: the machine is shared
        spent = 0.0
        for i, (key, credential) in enumerate(clients):
            n = base + i
            addr = (f"127.0.{n // SOURCES % 250}.{n % SOURCES + 1}", self.port)
            client = ClientProtocol(key, core.public, credential, new_keypair=self.new_keypair)
            now = time.monotonic()
            client.connect(now)
            rounds = 0
            while client.config is None:
                rounds += 1
                if rounds > 6:
                    raise SystemExit(f"client {n} did not connect: {dict(core.counters)}")
                out = client.datagrams_to_send()
                if not out:  # after a cookie reply: message 1 again when the client's timer says
                    due = client.get_timer()
                    assert due is not None
                    client.handle_timer(max(due, now))
                    out = client.datagrams_to_send()
                if profiler is not None:
                    profiler.enable()
                t0 = clock()
                now = time.monotonic()
                endpoint = gw.listeners.udp_endpoint(addr, self.udp)
                for data in out:
                    core.receive_datagram(data, endpoint, now)
                gw.after_io(now)
                spent += clock() - t0
                if profiler is not None:
                    profiler.disable()
                now = time.monotonic()
                for data in self.received():
                    client.receive_datagram(data, now)
                while (event := client.next_event()) is not None:
                    if isinstance(event, ConfigReceived):
                        break
        return spent

    def close(self) -> None:
        self._loop.close()
        self.udp.sock.close()
        self.sink.close()
        self.tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=300, help="handshakes per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cookies", action="store_true", help="cookie_threshold = 0")
    p.add_argument("--python", action="store_true", help="without the compiled data path")
    p.add_argument("--log-level", default="info", choices=logs.LEVELS, help="the daemon's (default: info)")
    p.add_argument("--profile", action="store_true")
    p.add_argument(
        "--credentials",
        default="",
        metavar="FILE",
        help="keep the epoch key and credentials here for the next run",
    )
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--sort", default="tottime", help="cProfile order: tottime, cumulative, ...")
    args = p.parse_args(argv)
    logs.setup(args.log_level, stream=open(os.devnull, "w"))  # noqa: SIM115 - as the daemon logs, to nowhere
    epoch = epoch_of(time.time(), DEFAULT_EPOCH_LENGTH)
    need = args.n * (args.rounds + 1)
    saved = Path(args.credentials) if args.credentials else None
    if saved is not None and saved.exists():
        der, *lines = saved.read_text().split()
        epoch_key = EpochKey(epoch, BlindRSAPrivateKey.from_der(base64.b64decode(der)))
        pool = [
            (KeyPair.from_private_bytes(base64.b64decode(k)), base64.b64decode(c))
            for k, c in zip(lines[::2], lines[1::2], strict=True)
        ]
    else:
        epoch_key = EpochKey(epoch, BlindRSAPrivateKey.generate())
        pool = []
    if len(pool) < need:
        t0 = time.monotonic()
        pool += credentials(need - len(pool), epoch_key)
        print(f"# {need} blind-RSA credentials in {time.monotonic() - t0:.0f} s (not timed)")
        if saved is not None:
            items = [base64.b64encode(epoch_key.key.to_der()).decode()]
            items += [base64.b64encode(x).decode() for k, c in pool for x in (k.private_bytes(), c)]
            saved.write_text("\n".join(items) + "\n")
    bench = Bench(epoch_key, args.cookies, not args.python)
    try:
        mode = "compiled" if bench.gateway.fast is not None else "python"
        bench.run(pool[: args.n], 0)  # warm-up
        profiler = cProfile.Profile() if args.profile else None
        rates = []
        for r in range(1, args.rounds + 1):
            spent = bench.run(pool[r * args.n : (r + 1) * args.n], r * args.n, profiler)
            rates.append(args.n / spent)
        print(
            f"gateway handshakes, cookies {'on' if args.cookies else 'off'} ({mode} data path): "
            f"median {statistics.median(rates):.0f}/s of gateway CPU, {1e6 / statistics.median(rates):.0f} µs each "
            f"(rounds: {', '.join(f'{x:.0f}' for x in rates)})"
        )
        if profiler is not None:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(args.sort).print_stats(args.top)
            print(out.getvalue())
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
