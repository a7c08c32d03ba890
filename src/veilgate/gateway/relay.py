"""The workers' relay: what reached the wrong worker of a many-worker gateway goes to its owner.

The kernel steers most traffic straight to the worker that owns it (``veilgate.gateway.shard``,
``veilgate.tun.steering``). What it cannot steer comes here, each item one datagram on a Unix
socket in the abstract namespace (one per worker, named after the gateway's TUN device):

- a UDP datagram whose header the kernel could not read (obfuscation) or that arrived after the
  client roamed, with the client's address: the owner answers from its own socket on the same port;
- a datagram from a stream connection another worker accepted (TCP, TLS), and the owner's answers
  back to that worker, which writes them on the connection;
- a packet from the TUN device for another worker's address;
- a handshake that resumes another worker's session (``protocol.events.Handoff``), and the resume
  tokens each worker holds, so that the worker reading message 3 knows where it belongs.

Only the gateway's own processes reach these sockets: the abstract namespace is per network
namespace and each receiver checks the sender's credentials (SO_PASSCRED) are its own uid.
Nothing here is written to disk or logged.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

from veilgate.gateway.shard import Shard
from veilgate.protocol.events import Handoff

log = logging.getLogger("veilgate.gateway")

UDP_IN = 1
"""A UDP datagram for the owner: the client's address, then the datagram."""
STREAM_IN = 2
"""A datagram from a stream connection of the sender: its number and carrier, then the datagram."""
STREAM_OUT = 3
"""A datagram for the client on a stream connection of the receiver: its number, then the datagram."""
TUN_IN = 4
"""A packet from the TUN device for an address of the owner."""
HANDOFF = 5
"""A handshake resuming the receiver's session: the endpoint, then the ``Handoff``."""
RESUME_HELD = 6
"""The sender holds the session this resume token names."""
RESUME_GONE = 7
"""The sender no longer holds the session this resume token names."""
KEY_HELD = 8
"""A live session of the sender is bound to this static key (``CredentialBindings``)."""
KEY_GONE = 9
"""No live session of the sender is bound to this static key any more."""

BUFFER = 8 * 1024 * 1024
MAX_ITEM = 65536 + 512

_HEAD = struct.Struct("!BH")  # kind, sender
_STREAM = struct.Struct("!IB")  # connection number, carrier (0: tcp, 1: tls)
_HANDOFF = struct.Struct("!32s32s32s32sII32s")
CARRIERS = ("tcp", "tls")
DIGEST = 16
"""The length of ``Handoff.final_digest``."""


def relay_name(tun_name: str, worker: int) -> bytes:
    """The abstract socket address of a worker's relay socket."""
    return b"\0veilgate-relay-" + tun_name.encode() + b"-" + str(worker).encode()


class Relay:
    """One worker's relay socket: items to the other workers, items from them."""

    def __init__(self, shard: Shard, tun_name: str, counters: Counter[str]) -> None:
        self.shard = shard
        self.tun_name = tun_name
        self.counters = counters
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(relay_name(tun_name, shard.k))
        sock.setblocking(False)
        self.sock = sock
        self._names = [relay_name(tun_name, w) for w in range(shard.n)]

    def close(self) -> None:
        self.sock.close()

    # ------------------------------------------------------------ out

    def send(self, worker: int, kind: int, body: bytes) -> None:
        try:
            self.sock.sendto(_HEAD.pack(kind, self.shard.k) + body, self._names[worker])
            self.counters["relayed-out" if kind < RESUME_HELD else "resume-announced"] += 1
        except OSError as exc:
            # ECONNREFUSED/ENOENT: that worker is restarting; EAGAIN: its queue is full. Like a
            # congested link, the item is lost; the protocol's retries cover it.
            self.counters["relay-dropped"] += 1
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN):
                log.debug("relay to worker %d failed: %s", worker, exc.strerror)

    def to_all(self, kind: int, body: bytes) -> None:
        for worker in range(self.shard.n):
            if worker != self.shard.k:
                self.send(worker, kind, body)

    def udp_in(self, worker: int, addr: tuple[Any, ...], data: bytes) -> None:
        self.send(worker, UDP_IN, encode_addr(addr) + data)

    def stream_in(self, worker: int, number: int, carrier: str, data: bytes) -> None:
        self.send(worker, STREAM_IN, _STREAM.pack(number, CARRIERS.index(carrier)) + data)

    def stream_out(self, worker: int, number: int, data: bytes) -> None:
        self.send(worker, STREAM_OUT, _STREAM.pack(number, 0) + data)

    def handoff(self, worker: int, endpoint: bytes, h: Handoff) -> None:
        body = _HANDOFF.pack(
            h.resume,
            h.static_public,
            h.send_key,
            h.recv_key,
            h.local_index,
            h.remote_index,
            h.next_resume,
        )
        self.send(worker, HANDOFF, body + h.final_digest + endpoint)

    # ------------------------------------------------------------ in

    def receive(self, handle: Callable[[int, int, bytes], None]) -> None:
        """Read every item waiting: ``handle(kind, sender, body)`` for each from a worker of ours."""
        sock = self.sock
        uid = os.getuid()  # now, not at start: the workers drop to their user after it
        while True:
            try:
                data, anc, _, _ = sock.recvmsg(MAX_ITEM, socket.CMSG_SPACE(12))
            except (BlockingIOError, InterruptedError):
                return
            if not _ours(anc, uid) or len(data) < _HEAD.size:
                self.counters["relay-refused"] += 1
                continue
            kind, sender = _HEAD.unpack_from(data)
            if sender >= self.shard.n:
                self.counters["relay-refused"] += 1
                continue
            if kind < RESUME_HELD:
                self.counters["relayed-in"] += 1
            handle(kind, sender, data[_HEAD.size :])


def _ours(ancillary: list[tuple[int, int, bytes]], uid: int) -> bool:
    """Whether an item's sender runs as ``uid`` or as root (a worker before its drop)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= 12:
            _, sender, _ = struct.unpack("iII", data[:12])
            return sender in (uid, 0)
    return False


def encode_addr(addr: tuple[Any, ...]) -> bytes:
    host = str(addr[0]).encode()
    return bytes([len(host)]) + host + int(addr[1]).to_bytes(2, "big")


def decode_addr(body: bytes) -> tuple[tuple[str, int], bytes]:
    """(host, port) and the rest of ``body``."""
    n = body[0]
    host = body[1 : 1 + n].decode()
    port = int.from_bytes(body[1 + n : 3 + n], "big")
    return (host, port), body[3 + n :]


def decode_stream(body: bytes) -> tuple[int, str, bytes]:
    number, carrier = _STREAM.unpack_from(body)
    return number, CARRIERS[carrier] if carrier < len(CARRIERS) else "tcp", body[_STREAM.size :]


def decode_handoff(body: bytes) -> tuple[Handoff, bytes]:
    """The ``Handoff`` and the endpoint bytes after it."""
    resume, static, send, recv, local, remote, nxt = _HANDOFF.unpack_from(body)
    rest = body[_HANDOFF.size :]
    return Handoff(resume, static, send, recv, nxt, local, remote, rest[:DIGEST]), rest[DIGEST:]


__all__ = [
    "HANDOFF",
    "KEY_GONE",
    "KEY_HELD",
    "RESUME_GONE",
    "RESUME_HELD",
    "STREAM_IN",
    "STREAM_OUT",
    "TUN_IN",
    "UDP_IN",
    "Relay",
    "decode_addr",
    "decode_handoff",
    "decode_stream",
    "encode_addr",
    "relay_name",
]
