"""The compiled data path on a TUN with the virtio-net header (IFF_VNET_HDR, ``vnet=True``).

As in tests/unit/test_fastpath.py, a datagram socketpair stands in for the TUN (one write, here one
writev of header and packet, is one datagram) and loopback UDP for the network. What the path
writes is checked as the kernel would take it: the header, then the coalesced packet, whose
partial checksum is finished here as the kernel finishes it and then verified.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest

from veilgate import fastpath
from veilgate.fastpath.keypair import CompiledKeypair
from veilgate.protocol.keypair import Keypair
from veilgate.tun.device import VNET_HDR_LEN, VNET_HDR_NONE, strip_vnet

from .test_fastpath import ClientRig

pytestmark = pytest.mark.skipif(not fastpath.BUILT, reason="the compiled data path is not built")

K1, K2 = bytes(range(32)), bytes(range(32, 64))
SRC, DST = "10.9.9.9", "10.0.0.2"
NEEDS_CSUM, GSO_TCPV4 = 1, 1


def csum(data: bytes) -> int:
    """RFC 1071: the folded ones'-complement sum (not inverted)."""
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo(src: bytes, dst: bytes, length: int) -> bytes:
    return src + dst + struct.pack("!BBH", 0, 6, length)


def tcp4(seq: int, payload: bytes, *, flags: int = 0x10, ack: int = 1000, bad_sum: bool = False) -> bytes:
    src, dst = socket.inet_aton(SRC), socket.inet_aton(DST)
    th = struct.pack("!HHIIBBHHH", 443, 5555, seq, ack, 5 << 4, flags, 512, 0, 0)
    check = 0xFFFF - csum(pseudo(src, dst, 20 + len(payload)) + th + payload)
    if bad_sum:
        check ^= 0x0101
    th = th[:16] + struct.pack("!H", check) + th[18:]
    ih = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0x4000, 64, 6, 0, src, dst)
    ih = ih[:10] + struct.pack("!H", 0xFFFF - csum(ih)) + ih[12:]
    return ih + th + payload


def udp4(payload: bytes) -> bytes:
    ih = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        28 + len(payload),
        1,
        0,
        64,
        17,
        0,
        socket.inet_aton(SRC),
        socket.inet_aton(DST),
    )
    return ih + struct.pack("!HHHH", 53, 53, 8 + len(payload), 0) + payload


class Rig(ClientRig):
    """A ClientPath on a TUN with the virtio-net header, its session's keys set."""

    def __init__(self) -> None:
        super().__init__(vnet=True)
        now = time.monotonic()
        self.mine = CompiledKeypair(K1, K2, 7, 9, now, True)
        self.gateway = Keypair(K2, K1, 9, 7, now, False)
        self.path.set_keys(self.mine.keys, (self.mine.keys,))

    def deliver(self, *packets: bytes) -> list[bytes]:
        """The gateway sends ``packets``; the path serves them in one batch; what reached the TUN."""
        # A keepalive first: after a quiet spell a wake-up takes one datagram (the lone-packet
        # rule); the next, right after, takes the rest in one batch.
        for p in (b"", *packets):
            self.gw.send(self.gateway.seal(p))
        time.sleep(0.01)
        self.path.udp_ready()
        self.path.udp_ready()
        out = []
        while True:
            try:
                out.append(self.host.recv(70000))
            except BlockingIOError:
                return out


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def finish(written: bytes) -> tuple[tuple[int, ...], bytes]:
    """Split a write into its header fields and the packet, the partial checksum finished."""
    hdr = struct.unpack("=BBHHHH", written[:VNET_HDR_LEN])
    packet = bytearray(written[VNET_HDR_LEN:])
    flags, _gso_type, _hdr_len, _gso_size, start, offset = hdr
    if flags & NEEDS_CSUM:
        packet[start + offset : start + offset + 2] = struct.pack("!H", 0xFFFF - csum(bytes(packet[start:])))
    return hdr, bytes(packet)


def test_in_order_segments_become_one_gso_packet_with_valid_checksums(rig: Rig) -> None:
    segs = [tcp4(1 + 100 * i, bytes([i]) * 100) for i in range(5)] + [tcp4(501, b"z" * 40, flags=0x18)]
    out = rig.deliver(*segs)
    assert len(out) == 1
    hdr, packet = finish(out[0])
    assert hdr == (NEEDS_CSUM, GSO_TCPV4, 40, 100, 20, 16)
    assert len(packet) == 40 + 540 and struct.unpack("!H", packet[2:4])[0] == 40 + 540
    assert csum(packet[:20]) == 0xFFFF  # the IPv4 header checksum was redone
    assert csum(pseudo(packet[12:16], packet[16:20], 560) + packet[20:]) == 0xFFFF
    assert packet[40:] == b"".join(s[40:] for s in segs)
    assert packet[33] == 0x18  # the last segment's PSH kept
    counters = rig.path.counters()
    assert counters["tun-writes"] == 1 and counters["tun-packets-coalesced"] == 5


def test_what_may_not_merge_is_written_alone_and_in_order(rig: Rig) -> None:
    first, second = tcp4(1, b"a" * 100), tcp4(101, b"b" * 100)
    gap = tcp4(301, b"c" * 100)  # a segment missing before it
    forged = tcp4(401, b"d" * 100, bad_sum=True)  # the checksum must not be made right
    other = udp4(b"dns")
    out = rig.deliver(first, second, gap, forged, other)
    assert [finish(w)[0][1] for w in out] == [GSO_TCPV4, 0, 0, 0]
    assert [w[VNET_HDR_LEN:] for w in out[1:]] == [gap, forged, other]
    assert all(w[:VNET_HDR_LEN] == VNET_HDR_NONE for w in out[1:])
    assert finish(out[0])[1][40:] == b"a" * 100 + b"b" * 100


def test_tun_reads_drop_the_header_and_refuse_offloaded_packets(rig: Rig) -> None:
    packet = udp4(b"hello")
    rig.host.send(VNET_HDR_NONE + packet)
    rig.host.send(struct.pack("=BBHHHH", NEEDS_CSUM, GSO_TCPV4, 40, 100, 20, 16) + tcp4(1, b"x" * 300))
    rig.path.tun_ready()
    time.sleep(0.01)
    assert rig.gateway.open(rig.gw.recv(2000), 0)[: len(packet)] == packet
    with pytest.raises(BlockingIOError):
        rig.gw.recv(2000)
    assert rig.path.counters()["tun-read-error"] == 1


def test_the_python_side_strips_a_plain_header_only() -> None:
    assert strip_vnet(VNET_HDR_NONE + b"\x45packet") == b"\x45packet"
    assert strip_vnet(bytes([NEEDS_CSUM]) + bytes(9) + b"\x45packet") is None
    assert strip_vnet(bytes([0, GSO_TCPV4]) + bytes(8) + b"\x45packet") is None
    assert strip_vnet(VNET_HDR_NONE) is None
