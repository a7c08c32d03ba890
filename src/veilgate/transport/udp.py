"""UDP with segmentation offload (GSO) and receive coalescing (GRO), from pure Python.

Linux sends a train of equal-size datagrams to one address with one ``sendmsg``
when it carries a ``UDP_SEGMENT`` control message (the last datagram may be
shorter), and hands over a train of datagrams from one sender with one
``recvmsg`` on a socket with ``UDP_GRO`` set, telling the segment size in a
control message. One system call and one trip through the stack then serve
up to 64 datagrams instead of one: on a bulk transfer this is the largest
saving left to a user-space tunnel (see docs/performance.md).

Python's ``socket`` module has no names for these options, so they are
defined here from ``linux/udp.h``. Where the kernel or the outgoing device
refuses GSO, the sender falls back to one ``sendto`` per datagram for good;
the receiver splits nothing unless the kernel said a buffer was coalesced.

:func:`plan_runs` (which datagrams can share one GSO send) and :func:`split`
(cutting a coalesced buffer back into datagrams) do no I/O and are unit-tested
on their own.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Iterator, Sequence
from typing import Any, Final

log = logging.getLogger("veilgate.transport")

SOL_UDP: Final = 17
UDP_SEGMENT: Final = 103
UDP_GRO: Final = 104
GSO_MAX_SEGMENTS: Final = 64
"""UDP_MAX_SEGMENTS of older kernels (newer ones allow 128)."""
GSO_MAX_BYTES: Final = 65000
"""Below the largest UDP payload over IPv4 (65,507 bytes)."""
GRO_BUFFER: Final = 65535
_GRO_CMSG_SPACE: Final = socket.CMSG_SPACE(4)
_U16: Final = struct.Struct("=H")
_INT: Final = struct.Struct("=i")

Address = tuple[Any, ...] | None
"""Where a datagram goes: a socket address, or None on a connected socket."""


def plan_runs(sizes: Sequence[int], keys: Sequence[object]) -> Iterator[tuple[int, int]]:
    """Cut a send queue into runs that one GSO send can carry, in order.

    A run is ``queue[start:end]``: same destination key, every datagram as
    long as the first except the last, which may be shorter; at most
    :data:`GSO_MAX_SEGMENTS` datagrams and :data:`GSO_MAX_BYTES` bytes.
    """
    n = len(sizes)
    start = 0
    while start < n:
        size, key = sizes[start], keys[start]
        end = start + 1
        total = size
        while (
            end < n
            and keys[end] == key
            and end - start < GSO_MAX_SEGMENTS
            and total + sizes[end] <= GSO_MAX_BYTES
        ):
            total += sizes[end]
            end += 1
            if sizes[end - 1] != size:
                if sizes[end - 1] > size:
                    end -= 1  # longer than the segment size: starts the next run
                break
        yield start, end
        start = end


def split(data: bytes, segment: int) -> list[bytes]:
    """The datagrams of a coalesced buffer (``segment`` from the ``UDP_GRO`` control message)."""
    if segment <= 0 or len(data) <= segment:
        return [data]
    return [data[i : i + segment] for i in range(0, len(data), segment)]


def enable_gro(sock: socket.socket) -> bool:
    """Ask the kernel to coalesce; False where it cannot (the socket then gets single datagrams)."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def recv_coalesced(sock: socket.socket) -> tuple[bytes, int, object]:
    """One ``recvmsg``: (buffer, segment size or 0, sender address)."""
    data, ancdata, _flags, addr = sock.recvmsg(GRO_BUFFER, _GRO_CMSG_SPACE)
    segment = 0
    for level, kind, value in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
            segment = _INT.unpack_from(value)[0]
    return data, segment, addr


class UdpSender:
    """Sends queued datagrams with GSO where the kernel allows it.

    ``queue(data, addr)`` with ``addr`` None on a connected socket; ``flush()``
    sends everything queued, in order. Counters: ``syscalls``, ``datagrams``,
    ``dropped`` (socket buffer full or a send error; lost as on the wire).
    """

    __slots__ = ("_data", "_keys", "datagrams", "dropped", "gso", "sock", "syscalls")

    def __init__(self, sock: socket.socket, *, gso: bool = True) -> None:
        self.sock = sock
        self.gso = gso
        self._data: list[bytes] = []
        self._keys: list[Address] = []
        self.syscalls = 0
        self.datagrams = 0
        self.dropped = 0

    def queue(self, data: bytes, addr: Address = None) -> None:
        self._data.append(data)
        self._keys.append(addr)

    def send(self, data: bytes, addr: Address = None) -> None:
        """Send one datagram now (after anything queued, to keep the order)."""
        if self._data:
            self.flush()
        self._send_one(data, addr)

    def flush(self) -> None:
        data, keys = self._data, self._keys
        if not data:
            return
        self._data, self._keys = [], []
        if not self.gso or len(data) == 1:
            for d, k in zip(data, keys, strict=True):
                self._send_one(d, k)
            return
        for start, end in plan_runs([len(d) for d in data], keys):
            if end - start == 1:
                self._send_one(data[start], keys[start])
            else:
                self._send_run(data[start:end], keys[start])

    def _send_one(self, data: bytes, addr: Address) -> None:
        self.syscalls += 1
        self.datagrams += 1
        try:
            if addr is None:
                self.sock.send(data)
            else:
                self.sock.sendto(data, addr)
        except OSError:
            self.dropped += 1  # buffer full (EAGAIN) or an ICMP error reported: lost as on the wire

    def _send_run(self, run: list[bytes], addr: Address) -> None:
        cmsg = [(SOL_UDP, UDP_SEGMENT, _U16.pack(len(run[0])))]
        self.syscalls += 1
        try:
            if addr is None:
                self.sock.sendmsg([b"".join(run)], cmsg)
            else:
                self.sock.sendmsg([b"".join(run)], cmsg, 0, addr)
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                # The kernel or the outgoing device cannot segment: never try again on this socket.
                log.info("udp segmentation offload unavailable (%s); one datagram per send", exc.strerror)
                self.gso = False
                self.syscalls -= 1
                for d in run:
                    self._send_one(d, addr)
                return
            self.dropped += len(run)
        self.datagrams += len(run)


__all__ = [
    "GSO_MAX_BYTES",
    "GSO_MAX_SEGMENTS",
    "Address",
    "UdpSender",
    "enable_gro",
    "plan_runs",
    "recv_coalesced",
    "split",
]
