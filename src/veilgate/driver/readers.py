"""Reading a TUN device and a UDP socket in batches, the way both daemons read them.

Under load the packets of one wake-up leave together (GSO runs on UDP, one write on TCP). After a
quiet spell (``QUIET_GAP``) the first packet is all there is: it leaves at once, before the read
that would find the device empty, and a lone datagram is handled without the receive that would
find the socket empty (epoll is level-triggered, so anything more wakes the reader again).
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

from veilgate.transport.loop import QUIET_GAP
from veilgate.transport.udp import recv_coalesced, split
from veilgate.tun.device import VNET_HDR_LEN, VNET_HDR_NONE, strip_vnet

TUN_BATCH = 256
"""Packets read from the TUN device per wake-up at most."""
UDP_BATCH = 256
"""Receives from a UDP socket per wake-up at most."""


class Wake:
    """When a reader last woke up: tells a lone packet after a quiet spell from a busy stream."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = -1.0

    def quiet(self, now: float) -> bool:
        """Record a wake-up at ``now``; True if the one before was at least ``QUIET_GAP`` ago."""
        quiet = now - self.last >= QUIET_GAP
        self.last = now
        return quiet


def read_tun(
    fd: int, now: float, quiet: bool, route: Callable[[bytes, float, bool], bool], vnet: bool = False
) -> None:
    """Read up to ``TUN_BATCH`` packets and hand each to ``route(packet, now, at_once)``.

    ``at_once`` is True for the first packet after a quiet spell (send it now rather than queue
    it); ``route`` returns True if the packet left, after which the rest are queued. ``vnet``: the
    device was opened with IFF_VNET_HDR, whose header each read starts with.
    """
    read = os.read
    size = 65535 + (VNET_HDR_LEN if vnet else 0)
    for _ in range(TUN_BATCH):
        try:
            data = read(fd, size)
        except (BlockingIOError, InterruptedError):
            break
        if not data:
            break
        packet = strip_vnet(data) if vnet else data
        if packet is None:
            continue
        if route(packet, now, quiet):
            quiet = False


def write_tun(fd: int, packet: bytes, vnet: bool) -> None:
    """Write one IP packet to the TUN device (after a plain virtio-net header with ``vnet``)."""
    if vnet:
        os.writev(fd, (VNET_HDR_NONE, packet))
    else:
        os.write(fd, packet)


def read_udp(
    sock: socket.socket,
    gro: bool,
    quiet: bool,
    receive: Callable[[bytes, Any], object],
    counters: Counter[str],
) -> None:
    """Receive up to ``UDP_BATCH`` times and hand each datagram to ``receive(datagram, source)``.

    With ``gro``, a coalesced buffer is split back into its datagrams. A receive error (an ICMP
    error reported on the socket) is counted as ``udp-recv-error`` and reading goes on.
    """
    recvfrom = sock.recvfrom
    segment = 0
    addr: Any
    for _ in range(UDP_BATCH):
        try:
            if gro:
                data, segment, addr = recv_coalesced(sock)
            else:
                data, addr = recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            counters["udp-recv-error"] += 1
            continue
        if segment:
            parts = split(data, segment)
            for part in parts:
                receive(part, addr)
            if quiet and len(parts) == 1:
                break
        else:
            receive(data, addr)
            if quiet:
                break
        quiet = False
