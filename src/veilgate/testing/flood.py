"""A handshake flooder, for the end-to-end test and benchmark of a gateway under a message 1 flood.

It plays the attacker of the denial-of-service section of docs/protocol.md: it knows the
gateway's public key (the provider document publishes it), so every message 1 it sends carries a
valid mac1 and costs the gateway real work; it sends from many source addresses; and it never
answers a cookie reply nor completes a handshake. The messages are built by the real initiator
(``InitiatorHandshake`` and ``CookieGenerator``) ahead of time, so sending costs a system call.

It runs inside a namespace that ``Topology.add_host`` made, with every source address assigned
there (``veilgate.testing.floodrun`` starts it so): the gateway's answers route back to it, and
it counts them (cookie replies, handshake responses) without ever using them. One socket sends
from all the addresses, choosing each datagram's source with ``IP_PKTINFO``. Sending is paced by
a token bucket and stops by itself after ``--duration`` seconds (or on SIGTERM); it then prints
one JSON line with what it achieved.

    python -m veilgate.testing.flood send --gateway 172.31.2.2:51820 --public-key KEY \\
        --source 172.31.20.2 --source 172.31.20.3 --rate 20000 --duration 15
    python -m veilgate.testing.flood capacity

``capacity`` measures the gateway core's handshake capacity on this machine: message 1 in,
message 2 out, per second, timing ``GatewayProtocol.receive_datagram`` on fresh valid message 1s;
and the cost of the cookie reply the core sends instead when it is under load.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import signal
import socket
import statistics
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import FrameType

from veilgate.config.keys import decode_key
from veilgate.protocol import messages
from veilgate.protocol.cookie import CookieGenerator
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.gateway import GatewayProtocol
from veilgate.protocol.handshake import InitiatorHandshake

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python defines the name from 3.13 on
SOCKET_BUFFER = 4 * 1024 * 1024
_U32 = struct.Struct("<I")


# ---------------------------------------------------------------- messages


def message_pool(gateway_public: bytes, handshakes: int = 256, indices: int = 16) -> list[bytes]:
    """``handshakes * indices`` distinct message 1s with a valid mac1 and no mac2.

    Each handshake has its own ephemeral X25519 and ML-KEM keys (the expensive part, ~0.4 ms);
    each gets ``indices`` random sender indices, and a sender index is covered by mac1, so each
    of those is stamped anew (a BLAKE2s).
    """
    static = KeyPair.generate()  # message 1 carries no static key (XK): one for all of them
    cookies = CookieGenerator(gateway_public)
    pool = []
    for _ in range(handshakes):
        hs = InitiatorHandshake(static, gateway_public, secrets.randbits(32), cookies, 0.0)
        body = bytearray(hs.init_message[: messages.INIT_MAC1_OFFSET])
        for _ in range(indices):
            _U32.pack_into(body, 4, secrets.randbits(32))
            pool.append(cookies.stamp(bytes(body), 0.0))
    return pool


# ---------------------------------------------------------------- sending


@dataclass
class FloodReport:
    """What one flood achieved; ``rate`` is what was sent, not what was asked for (``target``)."""

    target: float
    sent: int
    elapsed: float
    rate: float
    send_errors: int
    sources: int
    distinct_messages: int
    cookie_replies: int
    responses: int
    other_replies: int


class Flooder:
    """Sends message 1s to ``gateway`` from ``sources`` (addresses held by this host) at ``rate`` per second.

    ``rate`` 0 sends as fast as one process can. The replies are read and counted only.
    """

    def __init__(
        self,
        gateway: tuple[str, int],
        pool: Sequence[bytes],
        sources: Sequence[str],
        rate: float,
        duration: float,
    ) -> None:
        if not pool or not sources:
            raise ValueError("a flood needs messages and source addresses")
        if not 0 < duration <= 600:
            raise ValueError("a flood lasts more than 0 and at most 600 seconds")
        if rate < 0:
            raise ValueError("the rate is a number of datagrams per second, 0 for as fast as possible")
        self.gateway = gateway
        self.pool = list(pool)
        self.sources = [ipaddress.IPv4Address(s) for s in sources]
        self.rate = rate
        self.duration = duration
        self.stopping = False
        self.cookie_replies = self.responses = self.other_replies = 0

    def stop(self) -> None:
        self.stopping = True

    def _drain(self, sock: socket.socket, buf: bytearray) -> None:
        for _ in range(4096):
            try:
                n = sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error reported on the socket
            kind = buf[0] if n else 0
            if kind == messages.TYPE_COOKIE_REPLY:
                self.cookie_replies += 1
            elif kind == messages.TYPE_HANDSHAKE_RESP:
                self.responses += 1
            else:
                self.other_replies += 1

    def run(self) -> FloodReport:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            sock.bind(("0.0.0.0", 0))
            return self._run(sock)
        finally:
            sock.close()

    def _run(self, sock: socket.socket) -> FloodReport:
        # in_pktinfo {ifindex, spec_dst, addr}: spec_dst is the source address of what we send.
        ancillary = [
            [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, a.packed, bytes(4)))]
            for a in self.sources
        ]
        pool, gateway, sendmsg = self.pool, self.gateway, sock.sendmsg
        n_pool, n_src = len(pool), len(ancillary)
        buf = bytearray(2048)
        rate = self.rate
        # The bucket holds at most 10 ms of sending (at least 16): a late wake-up costs no rate.
        burst = max(16.0, rate * 0.01) if rate else 256.0
        sent = errors = i = 0
        tokens = 0.0
        start = last = time.monotonic()
        end = start + self.duration
        while not self.stopping:
            now = time.monotonic()
            if now >= end:
                break
            if rate:
                tokens = min(burst, tokens + (now - last) * rate)
                last = now
                if tokens < 1.0:
                    self._drain(sock, buf)
                    time.sleep(min((1.0 - tokens) / rate, end - now))
                    continue
                batch = int(tokens)
                tokens -= batch
            else:
                batch = int(burst)
            for _ in range(batch):
                try:
                    sendmsg([pool[i % n_pool]], ancillary[i % n_src], 0, gateway)
                    sent += 1
                except OSError:  # ENOBUFS, or an ICMP error reported on the socket
                    errors += 1
                i += 1
            self._drain(sock, buf)
        elapsed = time.monotonic() - start
        time.sleep(0.2)  # the last answers still on their way
        self._drain(sock, buf)
        return FloodReport(
            target=rate,
            sent=sent,
            elapsed=round(elapsed, 3),
            rate=round(sent / elapsed, 1) if elapsed > 0 else 0.0,
            send_errors=errors,
            sources=n_src,
            distinct_messages=n_pool,
            cookie_replies=self.cookie_replies,
            responses=self.responses,
            other_replies=self.other_replies,
        )


# ---------------------------------------------------------------- capacity


class _Source(tuple[str, int]):
    """An endpoint for the core (a UDP address)."""

    def cookie_bytes(self) -> bytes:
        return ipaddress.ip_address(self[0]).packed + self[1].to_bytes(2, "big")


class _NoCredentials:
    def verify(self, data: bytes, static_public: bytes, now: float) -> object:
        raise AssertionError("a capacity run never gets to message 3")


@dataclass
class Capacity:
    handshakes_per_second: float
    """Message 1 in, message 2 out, per second of one core, in ``GatewayProtocol`` alone."""
    handshake_us: float
    cookie_reply_us: float
    """What the core spends on a message 1 it answers with a cookie reply instead (under load)."""


def measure_capacity(per_round: int = 200, rounds: int = 3, cookie_replies: int = 20000) -> Capacity:
    """The core's handshake capacity on this machine (median over rounds) and a cookie reply's cost.

    ``per_round`` stays below the 512 initiations in a second and the 512 pending handshakes (an
    eighth of the table) at which a gateway switches cookies on: every message 1 is answered with a
    message 2. The daemon's own receive and send add to both figures.
    """
    gateway_key = KeyPair.generate()
    source = _Source(("198.51.100.7", 40000))
    times = []
    pool: list[bytes] = []
    for r in range(rounds):
        pool = message_pool(gateway_key.public, per_round, 1)
        core = GatewayProtocol(gateway_key, _NoCredentials())
        now = 1000.0 * (r + 1)
        t0 = time.perf_counter()
        for msg in pool:
            core.receive_datagram(msg, source, now)
            core.datagrams_to_send()
        times.append((time.perf_counter() - t0) / len(pool))
        if core.counters["handshake-responses"] != len(pool):
            raise RuntimeError(f"the core did not answer every message 1 with a message 2: {core.counters}")
    per_handshake = statistics.median(times)
    core = GatewayProtocol(gateway_key, _NoCredentials())
    core.force_under_load = True
    t0 = time.perf_counter()
    for k in range(cookie_replies):
        core.receive_datagram(pool[k % len(pool)], source, 5000.0)
        core.datagrams_to_send()
    per_cookie = (time.perf_counter() - t0) / cookie_replies
    return Capacity(round(1.0 / per_handshake, 1), round(per_handshake * 1e6, 1), round(per_cookie * 1e6, 2))


# ---------------------------------------------------------------- command line


def _endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        if not sep:
            raise ValueError
        ipaddress.IPv4Address(host)
        number = int(port)
        if not 1 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected IPv4-ADDRESS:PORT, got {text!r}") from None
    return host, number


def _key(text: str) -> bytes:
    try:
        return decode_key(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected the gateway's base64 public key (32 bytes)") from None


def _sources(text: str) -> list[str]:
    """One address, or a network whose host addresses (beyond .1, the router) are all used."""
    try:
        if "/" in text:
            net = ipaddress.IPv4Network(text, strict=False)
            return [str(a) for a in net.hosts() if a != next(net.hosts())]
        return [str(ipaddress.IPv4Address(text))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IPv4 address or network, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m veilgate.testing.flood", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    send = sub.add_parser("send", help="flood a gateway with message 1s; prints a JSON report")
    send.add_argument("--gateway", type=_endpoint, required=True, help="the gateway's ADDRESS:PORT (UDP)")
    send.add_argument("--public-key", type=_key, required=True, help="the gateway's base64 public key")
    send.add_argument(
        "--source",
        type=_sources,
        action="extend",
        required=True,
        help="a source address held by this host, or a network of them (repeatable)",
    )
    send.add_argument("--rate", type=float, default=0.0, help="datagrams per second; 0: as fast as possible")
    send.add_argument("--duration", type=float, default=10.0, help="seconds (at most 600)")
    send.add_argument("--handshakes", type=int, default=256, help="distinct handshakes in the pool")
    send.add_argument("--indices", type=int, default=16, help="sender indices per handshake")
    cap = sub.add_parser("capacity", help="the gateway core's handshakes per second on this machine")
    cap.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    if args.command == "capacity":
        print(json.dumps(asdict(measure_capacity(rounds=args.rounds))))
        return 0
    if not 1 <= args.handshakes <= 4096 or not 1 <= args.indices <= 256:
        parser.error("--handshakes is 1 to 4096 and --indices 1 to 256")
    try:
        flooder = Flooder(
            args.gateway,
            message_pool(args.public_key, args.handshakes, args.indices),
            list(dict.fromkeys(args.source)),
            args.rate,
            args.duration,
        )
    except ValueError as exc:
        parser.error(str(exc))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        flooder.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The pool is built: say so, so that a caller can start its clock with the flood.
    print("flooding", file=sys.stderr, flush=True)
    try:
        report = flooder.run()
    except OSError as exc:
        print(f"flood: cannot send: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(report)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
