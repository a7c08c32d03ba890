"""The compiled data path (src/veilgate/fastpath/*.c) through its Python entry points.

Built with AddressSanitizer and UndefinedBehaviorSanitizer by fuzz/build-sanitized.sh (fuzz/main.py
loads that build in place of the normal one); without it, this target runs the normal build and
checks only what Python sees. The TUN devices are datagram socketpairs and the network is UDP on
loopback, as in tests/unit/test_fastpath.py, so the loops make their real system calls; every
address a loop can send to is one of this harness's own loopback sockets.

An input is a short program: each step's first byte picks an operation, the next bytes its
arguments (fuzz/targets/fastpath.py ``Reader``):

- Keys.open on arbitrary datagrams and on datagrams sealed with arbitrary counters, compared with
  the pure-Python keypair (same keys, same replay window): both must agree;
- Keys.seal of arbitrary payloads at arbitrary send counters, opened by the Python keypair;
- the client's and the gateway's UDP loops on raw and sealed datagrams, singly or as one GSO
  send to a GRO socket (the loops then split it), and their TUN loops on arbitrary packets;
  whatever they write to a TUN must be one whole IP packet, whatever they hand to Python must be
  the datagram untouched or an opened control message;
- Keys, Peer.update and the constructors with arbitrary arguments (ValueError, OverflowError and
  TypeError are their documented refusals).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable

from common import check_ip_packet

from veilgate import fastpath
from veilgate.protocol.constants import (
    REJECT_AFTER_MESSAGES,
)
from veilgate.protocol.errors import DecryptError, RemoteProtocolError
from veilgate.protocol.keypair import Keypair

K1, K2 = bytes(range(32)), bytes(range(32, 64))
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
CLIENT_V4 = socket.inet_aton("10.0.0.2")
CLIENT_V6 = socket.inet_pton(socket.AF_INET6, "fd00::2")
REFUSALS = (ValueError, OverflowError, TypeError)
MAX_STEPS = 6


class Reader:
    """Consumes an input: bytes, integers and the rest."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def byte(self) -> int:
        b = self.take(1)
        return b[0] if b else 0

    def u64(self) -> int:
        return int.from_bytes(self.take(8).ljust(8, b"\x00"), "little")

    def blob(self) -> bytes:
        """A length-prefixed chunk (2 bytes of length)."""
        n = int.from_bytes(self.take(2).ljust(2, b"\x00"), "little")
        return self.take(n)


def _udp_pair() -> tuple[socket.socket, socket.socket]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    a.connect(b.getsockname())
    b.connect(a.getsockname())
    for s in (a, b):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    return a, b


def _drain(s: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(s.recv(1 << 17))
        except BlockingIOError:
            return out


def _sockaddr(s: socket.socket) -> bytes:
    host, port = s.getsockname()
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", port, socket.inet_aton(host))


class Rig:
    """A client path and a gateway path, each with its UDP peer and TUN stand-in."""

    def __init__(self) -> None:
        self.ctun, self.chost = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.gtun, self.ghost = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (self.ctun, self.chost, self.gtun, self.ghost):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.cudp, self.cremote = _udp_pair()  # the client's socket and "the gateway" sending to it
        self.gudp, self.gremote = _udp_pair()  # the gateway's socket and "a client" sending to it
        for s in (self.cudp, self.gudp):
            s.setsockopt(SOL_UDP, UDP_GRO, 1)
        self.client = fastpath.ClientPath(self.ctun.fileno(), self.cudp.fileno(), True, True)
        self.routes: dict[bytes, fastpath.Peer] = {}
        self.indices: dict[int, fastpath.Peer] = {}
        self.gateway = fastpath.GatewayPath(self.gtun.fileno(), self.routes, self.indices, False)
        self.sock = self.gateway.add_socket(self.gudp.fileno(), True, True)
        self.peer = fastpath.Peer(None)
        self.other = fastpath.Peer(None)  # another session, for the client-to-client rule
        self.routes[CLIENT_V4] = self.peer
        self.routes[CLIENT_V6] = self.peer
        self.routes[socket.inet_aton("10.0.0.3")] = self.other
        self.fresh_keys()

    def fresh_keys(self) -> None:
        """New keys on both paths (index 7 here, 9 at the peer) and the Python peers that match them."""
        now = time.monotonic()
        self.ckeys = fastpath.Keys(K1, K2, 7, 9, now)
        self.gkeys = fastpath.Keys(K1, K2, 7, 9, now)
        # Keys only Keys.open sees (the loops open with ckeys and gkeys), and their Python twin.
        self.okeys = fastpath.Keys(K1, K2, 7, 9, now)
        self.twin = Keypair(K1, K2, 7, 9, now, True)
        self.client.set_keys(self.ckeys, (self.ckeys,))
        self.peer.update(self.gkeys, (self.gkeys,), self.sock, _sockaddr(self.gremote), CLIENT_V4, CLIENT_V6)
        self.indices.clear()
        self.indices[7] = self.peer

    def drain(self) -> None:
        for s in (
            self.chost,
            self.ghost,
            self.ctun,
            self.gtun,
            self.cremote,
            self.gremote,
            self.cudp,
            self.gudp,
        ):
            _drain(s)
        self.client.take()
        self.gateway.take()
        self.peer.take()


def counter_of(datagram: bytes) -> int:
    return int.from_bytes(datagram[8:16], "little")


def _peer_sealer(counter: int) -> Keypair:
    sender = Keypair(K2, K1, 9, 7, 0.0, False)
    sender.send_counter = counter
    return sender


def _gso_send(sock: socket.socket, datagrams: list[bytes]) -> None:
    """One GSO send of ``datagrams`` (all as long as the first, the last may be shorter)."""
    if not datagrams:
        return
    seg = len(datagrams[0])
    run = [d for d in datagrams if len(d) == seg]
    if len(datagrams) > len(run) and len(datagrams[len(run)]) < seg:
        run.append(datagrams[len(run)])
    payload = b"".join(run)
    if not 0 < seg < len(payload) <= 65000:
        sock.send(datagrams[0])
        return
    try:
        sock.sendmsg([payload], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", seg))])
    except OSError:
        for d in run:
            sock.send(d)


def _check_tun(packets: list[bytes], where: str) -> None:
    for p in packets:
        check_ip_packet(p, where)


def _check_pending(pending: list[fastpath.Pending], sent: set[bytes], where: str) -> None:
    for entry in pending:
        kind, data = entry.kind, entry.data
        assert isinstance(data, bytes)
        if kind == fastpath.PENDING_DATAGRAM and data not in sent:
            raise AssertionError(f"{where}: handed Python a datagram it was not sent")
        if kind == fastpath.PENDING_OPENED and (not data or data[0] != 0xF0):
            raise AssertionError(f"{where}: handed Python an opened payload that is not a control message")


def make() -> Callable[[bytes], None]:
    rig = Rig()

    def datagrams(r: Reader) -> list[bytes]:
        """Raw datagrams or payloads sealed by the peer at chosen counters."""
        out = []
        for _ in range(1 + r.byte() % 4):
            kind = r.byte()
            if kind & 1:
                out.append(r.blob())
            else:
                out.append(_peer_sealer(r.u64() % (1 << 20) if kind & 2 else len(out)).seal(r.blob()))
        return out

    def step(r: Reader) -> None:
        op = r.byte() % 9
        if op == 0:  # open arbitrary bytes, or bytes sealed at an arbitrary counter: C and Python agree
            raw = r.byte() & 1
            counter = r.u64()
            d = r.blob() if raw else _peer_sealer(min(counter, REJECT_AFTER_MESSAGES - 1)).seal(r.blob())
            got = rig.okeys.open(d)
            if len(d) < 32:
                if got not in (1, 2):
                    raise AssertionError(f"Keys.open: {got!r} for a datagram of {len(d)} bytes")
                return
            try:
                want: bytes | int = rig.twin.open(d, counter_of(d))
            except DecryptError:
                want = 2
            except RemoteProtocolError:
                want = 1
            if isinstance(got, int) and isinstance(want, int) and counter_of(d) >= REJECT_AFTER_MESSAGES:
                return  # beyond the last counter: dropped by both, as a replay (C) or before it as a forgery
            if got != want:
                raise AssertionError(f"Keys.open: compiled {got!r} but Python {want!r}")
        elif op == 1:  # seal at an arbitrary send counter; the peer opens it
            counter = r.u64()
            payload = r.blob()
            with contextlib.suppress(*REFUSALS):
                rig.ckeys.send_counter = counter
            try:
                d = rig.ckeys.seal(payload)
            except REFUSALS:
                return
            peer = Keypair(K2, K1, 9, 7, 0.0, False)
            c = int.from_bytes(d[8:16], "little")
            if peer.open(d, c)[: len(payload)] != payload:
                raise AssertionError("Keys.seal: the peer opens something else")
        elif op in (2, 3):  # the client's (2) or gateway's (3) UDP loop
            ds = datagrams(r)
            gso = r.byte() & 1
            sender = rig.cremote if op == 2 else rig.gremote
            if gso:
                _gso_send(sender, ds)
            else:
                for d in ds:
                    sender.send(d)
            for _ in range(4):
                if op == 2:
                    rig.client.udp_ready()
                else:
                    rig.gateway.udp_ready(rig.sock)
            host = rig.chost if op == 2 else rig.ghost
            _check_tun(_drain(host), "client UDP loop" if op == 2 else "gateway UDP loop")
            pending = rig.client.take()[0] if op == 2 else rig.gateway.take()[0]
            _check_pending(
                list(pending), set(ds) | {b"".join(ds)}, "client UDP loop" if op == 2 else "gateway UDP loop"
            )
            rig.client.counters()
            rig.gateway.counters()
            rig.peer.take()
        elif op in (4, 5):  # the client's (4) or gateway's (5) TUN loop: sealed packets the peer can open
            # A TUN device never reads as an empty packet (the loops stop at a 0-byte read).
            packets = [p for p in (r.blob() for _ in range(1 + r.byte() % 3)) if p]
            host = rig.chost if op == 4 else rig.ghost
            for p in packets:
                with contextlib.suppress(OSError):
                    host.send(p)
            if op == 4:
                rig.client.tun_ready()
            else:
                rig.gateway.tun_ready()
            out = _drain(rig.cremote if op == 4 else rig.gremote)
            peer = Keypair(K2, K1, 9, 7, 0.0, False)
            for d in out:
                try:
                    pt = peer.open(d, int.from_bytes(d[8:16], "little"))
                except RemoteProtocolError as exc:
                    raise AssertionError("TUN loop: sent a datagram the peer cannot open") from exc
                if not any(pt[: len(p)] == p and len(pt) - len(p) < 16 for p in packets):
                    raise AssertionError("TUN loop: sealed something that was not read from the TUN")
            if op == 4:
                rig.client.take()
            else:
                rig.gateway.take()
        elif op == 6:  # Keys with arbitrary arguments
            with contextlib.suppress(*REFUSALS):
                fastpath.Keys(
                    r.take(r.byte() % 40), r.take(32), r.u64() >> (r.byte() % 64), r.u64() >> 32, 0.0
                )
        elif op == 7:  # Peer.update with truncated or odd addresses (always our own loopback socket)
            sa = _sockaddr(rig.gremote)
            family = r.byte() % 3
            if family == 1:
                sa = struct.pack("=H", socket.AF_INET6) + sa[2:] + bytes(12)
            elif family == 2:
                sa = struct.pack("=H", socket.AF_UNSPEC) + sa[2:]
            sa = sa[: r.byte() % (len(sa) + 8)]
            v4 = r.take(r.byte() % 6) or None
            with contextlib.suppress(*REFUSALS):
                rig.peer.update(rig.gkeys, (rig.gkeys,), (r.byte() % 3) - 1, sa, v4, CLIENT_V6)
        else:
            rig.fresh_keys()

    def one(data: bytes) -> None:
        r = Reader(data)
        try:
            for _ in range(MAX_STEPS):
                if not r.left():
                    break
                step(r)
        finally:
            rig.drain()
            rig.fresh_keys()

    return one
