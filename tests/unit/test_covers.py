"""Obfuscation covers (docs/protocol.md 14.4): the STUN Binding Request that opens a UDP flow, the
proxy CONNECT that opens a plain TCP connection, padding frames; the gateway discards its
clients' covers and drops and counts anything else."""

from __future__ import annotations

import struct
import zlib

import pytest

from tests.unit.harness import Addr
from veilgate.protocol import covers
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.gateway import GatewayProtocol
from veilgate.testing import fet
from veilgate.transport.framing import REQUEST, RESPONSE, FramingError, MaskedFrameDecoder, MaskedFrameEncoder
from veilgate.transport.tcp import SEGMENT, SMALL_MAX, shaped_size


class _NoCredentials:
    def verify(self, data: bytes, static_public: bytes, now: float) -> object:
        raise AssertionError("no handshake gets this far")


KEY = bytes(range(32))
STREAM = bytes(range(32, 64))


def test_the_stun_request_is_well_formed_and_keyed() -> None:
    req = covers.stun_binding_request(KEY)
    kind, length, magic = struct.unpack_from(">HHI", req)
    assert (kind, magic, length) == (covers.STUN_BINDING_REQUEST, covers.STUN_MAGIC, len(req) - 20)
    # FINGERPRINT as RFC 8489 15.5 defines it: a STUN parser accepts it.
    (crc,) = struct.unpack(">I", req[-4:])
    assert crc == zlib.crc32(req[:-8]) ^ 0x5354554E
    assert covers.looks_like_stun(req) and covers.is_cover_request(KEY, req)
    assert not covers.is_cover_request(bytes(32), req)
    flipped = bytearray(req)
    flipped[30] ^= 1
    assert covers.looks_like_stun(bytes(flipped)) and not covers.is_cover_request(KEY, bytes(flipped))


def test_the_connect_request_carries_the_nonce_and_passes_the_fet_rules() -> None:
    nonce = bytes(12)
    req = covers.connect_request(KEY, nonce, "vpn.example.org", pad_to=700)
    assert len(req) >= 700 and req.endswith(b"\r\n\r\n")
    accepted = covers.accept_connect(KEY, req)
    assert accepted is not None and accepted[0] == nonce
    assert covers.is_connect_response(accepted[1])
    assert not fet.verdict(req).flagged
    assert covers.accept_connect(bytes(32), req) is None
    assert covers.accept_connect(KEY, req.replace(b"CONNECT ", b"GET ", 1)) is None
    assert covers.accept_connect(KEY, req.replace(b"Negotiate ", b"Basic ")) is None
    assert covers.accept_connect(KEY, req[:-40] + b"\r\n\r\n") is not None  # the padding is not checked


def _stream(enc: MaskedFrameEncoder, datagrams: list[bytes]) -> bytes:
    return b"".join(enc.encode(d) + enc.padding(3 + i * 100) for i, d in enumerate(datagrams))


@pytest.mark.parametrize("cut", [0, 1, 100, 500, 700])
def test_a_covered_stream_round_trips_both_ways_and_padding_is_discarded(cut: int) -> None:
    datagrams = [b"a" * 148, b"b" * 1400, b"c"]
    client = MaskedFrameEncoder(STREAM, cover_key=KEY)
    up = covers.connect_request(KEY, client.nonce, "h") + _stream(client, datagrams)
    gateway_in = MaskedFrameDecoder(STREAM, head=REQUEST, cover_key=KEY)
    got = gateway_in.feed(up[:cut]) + gateway_in.feed(up[cut:])
    assert got == datagrams
    assert gateway_in.padding == sum(1 + i * 100 for i in range(3))
    assert covers.is_connect_response(gateway_in.reply)
    server = MaskedFrameEncoder(STREAM)
    down = gateway_in.reply + _stream(server, datagrams)
    client_in = MaskedFrameDecoder(STREAM, head=RESPONSE, cover_key=KEY)
    assert client_in.feed(down[:cut]) + client_in.feed(down[cut:]) == datagrams


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01" + bytes(5000),  # no head within its bound
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # a browser's request
        covers.connect_request(bytes(32), bytes(12), "h"),  # another gateway's
    ],
)
def test_a_stream_without_this_gateways_connect_is_refused(garbage: bytes) -> None:
    dec = MaskedFrameDecoder(STREAM, head=REQUEST, cover_key=KEY)
    with pytest.raises(FramingError):
        dec.feed(garbage)
    assert dec.in_head and not dec.reply


def test_shaped_sizes_are_small_writes_or_full_segments() -> None:
    for n in (50, 148, 600, 1300, 3000):
        for _ in range(200):
            size = shaped_size(n)
            assert size >= n + 3
            assert size <= SMALL_MAX or size % SEGMENT > SEGMENT - 201 or size % SEGMENT == 0


def test_the_gateway_discards_its_clients_stun_requests_and_counts_others() -> None:
    gw_key = KeyPair.generate()
    core = GatewayProtocol(gw_key, _NoCredentials(), obfuscation=True)
    endpoint = Addr("192.0.2.1", 4000)
    cover = covers.stun_binding_request(covers.cover_key(gw_key.public))
    assert core.receive_datagram(cover, endpoint, 0.0) is None
    assert core.receive_datagram(covers.stun_binding_request(KEY), endpoint, 0.0) is None
    assert core.counters["cover-discarded"] == 1
    assert core.counters["drop-cover"] == 1
    assert not core.sessions and not core.datagrams_to_send()
