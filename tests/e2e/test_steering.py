"""Kernel-side steering of a multi-worker gateway, on the real kernel inside a test namespace: the
multi-queue TUN's eBPF program puts every packet routed into it on queue (low 32 bits of the
destination) % n, and the SO_REUSEPORT group's classic BPF program puts handshake-final and
transport datagrams on socket (receiver index) % n and leaves the others to the kernel's hash."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import select
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from veilgate.protocol import messages
from veilgate.protocol.messages import HDR_INIT, INIT_LEN, HandshakeFinal, Transport
from veilgate.testing import Topology
from veilgate.tun import steering

pytestmark = pytest.mark.e2e

CLONE_NEWNET = 0x40000000
PREFIX_V4 = ipaddress.IPv4Network("10.77.0.0/24")
PREFIX_V6 = ipaddress.IPv6Network("fd77:5::/64")
DISCARD_PORT = 9


def test_the_udp_program_reads_the_wire_format() -> None:
    assert steering.TYPE_HANDSHAKE_FINAL == messages.TYPE_HANDSHAKE_FINAL
    assert steering.TYPE_TRANSPORT == messages.TYPE_TRANSPORT
    r = steering.RECEIVER_OFFSET
    for data in (
        Transport(0x01020304, 9, bytes(16)).encode(),
        HandshakeFinal(0x01020304, bytes(64)).encode(),
    ):
        assert int.from_bytes(data[r : r + 4], "little") == 0x01020304


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists() or shutil.which("ip") is None:
        pytest.skip("needs root, /dev/net/tun and ip")
    with Topology() as t:
        yield t


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run this thread in network namespace ``ns`` (sockets and TUN devices made meanwhile stay
    there); back to the original one after, also on failure."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {ns}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(home)


def destination_low32(packet: bytes) -> int:
    version = packet[0] >> 4
    if version == 4:
        return int.from_bytes(packet[16:20], "big")
    if version == 6:
        return int.from_bytes(packet[36:40], "big")
    raise AssertionError(f"not an IP packet: {packet[:8].hex()}")


def destinations() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    v4: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [
        PREFIX_V4.network_address + k
        for k in range(2, 255)  # not .1: the interface's own
    ]
    base = int(PREFIX_V6.network_address)
    # Low 32 bits spread over the whole range, not only the last 16 (a u16 cut would show for n=3).
    lows = [
        *range(2, 120),
        0xDEADBEEF,
        0xFFFFFFFE,
        0x00010000,
        0x00020001,
        0x7FFF0003,
        *(0x10001 * k for k in range(1, 40)),
    ]
    v6 = [ipaddress.IPv6Address(base | (0x1234 << 32) | low) for low in lows]
    return v4 + v6


@pytest.mark.parametrize("n", [2, 3])
def test_tun_packets_land_on_the_queue_of_their_destination(topo: Topology, n: int) -> None:
    name = f"vgsteer{topo.tag}"
    with inside(topo.gateway):
        fds, _vnet = steering.open_tun_queues(name, n)
        try:
            steering.attach_tun_steering(fds[0], n)
            topo.ns_run(topo.gateway, "ip", "link", "set", name, "up")
            topo.ns_run(topo.gateway, "ip", "addr", "add", f"{PREFIX_V4[1]}/24", "dev", name)
            topo.ns_run(topo.gateway, "ip", "-6", "addr", "add", f"{PREFIX_V6[1]}/64", "dev", name, "nodad")
            wanted = destinations()
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4,
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s6,
            ):
                for dst in wanted:
                    (s4 if dst.version == 4 else s6).sendto(b"steer " + dst.packed, (str(dst), DISCARD_PORT))
            seen: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, int] = {}
            other = 0
            deadline = time.monotonic() + 5
            while len(seen) < len(wanted) and time.monotonic() < deadline:
                select.select(fds, [], [], 0.2)
                for queue, fd in enumerate(fds):
                    while True:
                        try:
                            packet = os.read(fd, 65535)
                        except BlockingIOError:
                            break
                        # Every packet, ours or the kernel's own (IPv6 router solicitations, MLD).
                        low = destination_low32(packet)
                        assert queue == low % n, f"dst low bits {low:#x} on queue {queue} of {n}"
                        if b"steer " in packet:
                            payload = packet[packet.index(b"steer ") + 6 :]
                            seen[ipaddress.ip_address(payload)] = queue
                        else:
                            other += 1
            assert set(seen) == set(wanted), f"{len(wanted) - len(seen)} packets did not arrive"
            for dst, queue in seen.items():
                assert queue == steering.worker_of_address(dst, n)
            assert len(set(seen.values())) == n  # every queue got its share
            steering.detach_tun_steering(fds[0])  # the kernel's flow hash again; traffic still flows
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4:
                s4.sendto(b"after", (str(PREFIX_V4[7]), DISCARD_PORT))
            select.select(fds, [], [], 2)
            assert any(b"after" in packet for fd in fds for packet in _drain(fd))
        finally:
            for fd in fds:
                os.close(fd)


def _drain(fd: int) -> list[bytes]:
    packets: list[bytes] = []
    with contextlib.suppress(BlockingIOError):
        while True:
            packets.append(os.read(fd, 65535))
    return packets


def _group(n: int) -> list[socket.socket]:
    """n UDP sockets on one port of 127.0.0.1 with SO_REUSEPORT, bound in order 0..n-1."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.setblocking(False)
            s.bind(("127.0.0.1", socks[0].getsockname()[1] if len(socks) > 1 else 0))
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def _receive(socks: list[socket.socket], count: int) -> list[tuple[int, bytes, int]]:
    """(socket position, datagram, source port) of ``count`` datagrams."""
    got: list[tuple[int, bytes, int]] = []
    deadline = time.monotonic() + 5
    while len(got) < count and time.monotonic() < deadline:
        select.select(socks, [], [], 0.2)
        for position, s in enumerate(socks):
            while True:
                try:
                    data, source = s.recvfrom(65535)
                except BlockingIOError:
                    break
                got.append((position, data, source[1]))
    assert len(got) == count, f"{count - len(got)} datagrams did not arrive"
    return got


INDICES = [*range(0, 40), 0x00010000, 0x00020001, 0x7FFF0003, 0xDEADBEEF, 0xFFFFFFFE, 0xFFFFFFFF, 0x12345678]


@pytest.mark.parametrize("n", [2, 3])
def test_udp_sessions_land_on_the_socket_of_their_receiver_index(topo: Topology, n: int) -> None:
    with inside(topo.gateway):
        socks = _group(n)
        try:
            steering.attach_udp_steering(socks[0], n)
            port = socks[0].getsockname()[1]
            messages = [Transport(i, 7, bytes(16)).encode() for i in INDICES]
            messages += [HandshakeFinal(i, bytes(64)).encode() for i in INDICES]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                for m in messages:
                    sender.sendto(m, ("127.0.0.1", port))
            got = _receive(socks, len(messages))
            assert sorted(data for _, data, _ in got) == sorted(messages)
            for position, data, _ in got:
                index = int.from_bytes(data[4:8], "little")
                assert position == steering.worker_of_index(index, n), f"index {index:#x} on {position}"
            assert len({position for position, _, _ in got}) == n
            steering.detach_udp_steering(socks[0])
            steering.detach_udp_steering(socks[0])  # none attached: not an error
        finally:
            for s in socks:
                s.close()


@pytest.mark.parametrize("n", [2, 3])
def test_other_datagrams_are_spread_by_the_kernel_hash(topo: Topology, n: int) -> None:
    with inside(topo.gateway):
        socks = _group(n)
        try:
            steering.attach_udp_steering(socks[0], n)
            port = socks[0].getsockname()[1]
            # Handshake initiations whose bytes 4-8 (the sender index) would spread them over every
            # socket were they read as a receiver index: from one source port, all go to one socket.
            inits = [HDR_INIT + i.to_bytes(4, "little") + bytes(INIT_LEN - 8) for i in range(30)]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                for m in inits:
                    sender.sendto(m, ("127.0.0.1", port))
            got = _receive(socks, len(inits))
            assert len({position for position, _, _ in got}) == 1
            # From 40 source ports, more than one socket (all on one: chance 2^-39 for n=2).
            senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(40)]
            try:
                for s in senders:
                    s.sendto(inits[0], ("127.0.0.1", port))
                got = _receive(socks, len(senders))
            finally:
                for s in senders:
                    s.close()
            by_port = {source: position for position, _, source in got}
            assert len(by_port) == len(senders)
            assert len(set(by_port.values())) > 1
        finally:
            for s in socks:
                s.close()
