"""Wire format: every message type, its byte layout and its parser.

All multi-byte integers on the wire are little-endian, as in WireGuard. Every
message starts with a 4-byte header: type (1 byte), protocol version (1 byte)
and two reserved zero bytes. The parsers here check lengths and the header and
raise :class:`RemoteProtocolError` (never another exception) on bad input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from veilgate.protocol.constants import COOKIE_NONCE_LEN, MAX_PAYLOAD_3, PROTOCOL_VERSION
from veilgate.protocol.crypto import DHLEN, KEM_CIPHERTEXT_LEN, KEM_PUBLIC_LEN, MAC_LEN, TAGLEN
from veilgate.protocol.errors import RemoteProtocolError, UnsupportedVersionError

TYPE_HANDSHAKE_INIT: Final = 1
TYPE_HANDSHAKE_RESP: Final = 2
TYPE_HANDSHAKE_FINAL: Final = 3
TYPE_COOKIE_REPLY: Final = 4
TYPE_TRANSPORT: Final = 5

HEADER_LEN: Final = 4
NOISE_MSG1_LEN: Final = DHLEN + (KEM_PUBLIC_LEN + TAGLEN) + TAGLEN  # e, enc(e1), enc(empty payload)
NOISE_MSG2_LEN: Final = DHLEN + (KEM_CIPHERTEXT_LEN + TAGLEN) + TAGLEN  # e, enc(kem ct), enc(empty)
NOISE_MSG3_MIN: Final = (DHLEN + TAGLEN) + TAGLEN  # enc(s), enc(payload)

INIT_LEN: Final = HEADER_LEN + 4 + NOISE_MSG1_LEN + MAC_LEN + MAC_LEN  # 1288
INIT_MAC1_OFFSET: Final = INIT_LEN - 2 * MAC_LEN
INIT_MAC2_OFFSET: Final = INIT_LEN - MAC_LEN
RESP_LEN: Final = HEADER_LEN + 4 + 4 + NOISE_MSG2_LEN  # 1164
FINAL_MIN_LEN: Final = HEADER_LEN + 4 + NOISE_MSG3_MIN  # 72
FINAL_MAX_LEN: Final = FINAL_MIN_LEN + MAX_PAYLOAD_3
COOKIE_REPLY_LEN: Final = HEADER_LEN + 4 + COOKIE_NONCE_LEN + MAC_LEN + TAGLEN  # 64
TRANSPORT_HEADER_LEN: Final = HEADER_LEN + 4 + 8  # 16
TRANSPORT_MIN_LEN: Final = TRANSPORT_HEADER_LEN + TAGLEN  # 32 (a keepalive)

_U32 = struct.Struct("<I")
_TRANSPORT_HDR = struct.Struct("<BBHIQ")


def header(msg_type: int) -> bytes:
    return bytes((msg_type, PROTOCOL_VERSION, 0, 0))


HDR_INIT: Final = header(TYPE_HANDSHAKE_INIT)
HDR_RESP: Final = header(TYPE_HANDSHAKE_RESP)
HDR_FINAL: Final = header(TYPE_HANDSHAKE_FINAL)
HDR_COOKIE: Final = header(TYPE_COOKIE_REPLY)
HDR_TRANSPORT: Final = header(TYPE_TRANSPORT)


def message_type(data: bytes) -> int:
    """Check the common header and return the message type.

    Raises ``UnsupportedVersionError`` for another protocol version and
    ``RemoteProtocolError`` for anything else malformed.
    """
    if len(data) < HEADER_LEN:
        raise RemoteProtocolError("datagram shorter than the header", "short")
    msg_type = data[0]
    if data[1] != PROTOCOL_VERSION:
        raise UnsupportedVersionError(data[1])
    if data[2] or data[3]:
        raise RemoteProtocolError("reserved header bytes not zero", "malformed")
    if not TYPE_HANDSHAKE_INIT <= msg_type <= TYPE_TRANSPORT:
        raise RemoteProtocolError(f"unknown message type {msg_type}", "type")
    return msg_type


@dataclass(frozen=True, slots=True)
class HandshakeInit:
    sender: int
    noise: bytes
    mac1: bytes
    mac2: bytes

    def encode(self) -> bytes:
        return HDR_INIT + _U32.pack(self.sender) + self.noise + self.mac1 + self.mac2

    @classmethod
    def decode(cls, data: bytes) -> HandshakeInit:
        _expect(data, TYPE_HANDSHAKE_INIT, INIT_LEN, INIT_LEN)
        return cls(
            _U32.unpack_from(data, 4)[0],
            data[8:INIT_MAC1_OFFSET],
            data[INIT_MAC1_OFFSET:INIT_MAC2_OFFSET],
            data[INIT_MAC2_OFFSET:],
        )


@dataclass(frozen=True, slots=True)
class HandshakeResp:
    sender: int
    receiver: int
    noise: bytes

    def encode(self) -> bytes:
        return HDR_RESP + _U32.pack(self.sender) + _U32.pack(self.receiver) + self.noise

    @classmethod
    def decode(cls, data: bytes) -> HandshakeResp:
        _expect(data, TYPE_HANDSHAKE_RESP, RESP_LEN, RESP_LEN)
        return cls(_U32.unpack_from(data, 4)[0], _U32.unpack_from(data, 8)[0], data[12:])


@dataclass(frozen=True, slots=True)
class HandshakeFinal:
    receiver: int
    noise: bytes

    def encode(self) -> bytes:
        return HDR_FINAL + _U32.pack(self.receiver) + self.noise

    @classmethod
    def decode(cls, data: bytes) -> HandshakeFinal:
        _expect(data, TYPE_HANDSHAKE_FINAL, FINAL_MIN_LEN, FINAL_MAX_LEN)
        return cls(_U32.unpack_from(data, 4)[0], data[8:])


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    def encode(self) -> bytes:
        return HDR_COOKIE + _U32.pack(self.receiver) + self.nonce + self.encrypted_cookie

    @classmethod
    def decode(cls, data: bytes) -> CookieReply:
        _expect(data, TYPE_COOKIE_REPLY, COOKIE_REPLY_LEN, COOKIE_REPLY_LEN)
        return cls(_U32.unpack_from(data, 4)[0], data[8 : 8 + COOKIE_NONCE_LEN], data[8 + COOKIE_NONCE_LEN :])


@dataclass(frozen=True, slots=True)
class Transport:
    receiver: int
    counter: int
    ciphertext: bytes

    def encode(self) -> bytes:
        return (
            _TRANSPORT_HDR.pack(TYPE_TRANSPORT, PROTOCOL_VERSION, 0, self.receiver, self.counter)
            + self.ciphertext
        )

    @classmethod
    def decode(cls, data: bytes) -> Transport:
        _expect(data, TYPE_TRANSPORT, TRANSPORT_MIN_LEN, None)
        _, _, _, receiver, counter = _TRANSPORT_HDR.unpack_from(data)
        return cls(receiver, counter, data[TRANSPORT_HEADER_LEN:])


Message = HandshakeInit | HandshakeResp | HandshakeFinal | CookieReply | Transport

_DECODERS: Final[
    dict[int, type[HandshakeInit | HandshakeResp | HandshakeFinal | CookieReply | Transport]]
] = {
    TYPE_HANDSHAKE_INIT: HandshakeInit,
    TYPE_HANDSHAKE_RESP: HandshakeResp,
    TYPE_HANDSHAKE_FINAL: HandshakeFinal,
    TYPE_COOKIE_REPLY: CookieReply,
    TYPE_TRANSPORT: Transport,
}


def decode(data: bytes) -> Message:
    """Parse any veilgate datagram into its message object."""
    return _DECODERS[message_type(data)].decode(data)


def _expect(data: bytes, msg_type: int, min_len: int, max_len: int | None) -> None:
    if message_type(data) != msg_type:
        raise RemoteProtocolError("unexpected message type", "type")
    n = len(data)
    if n < min_len or (max_len is not None and n > max_len):
        raise RemoteProtocolError(f"message type {msg_type} has a bad length {n}", "length")


def pack_transport_header(receiver: int, counter: int) -> bytes:
    return _TRANSPORT_HDR.pack(TYPE_TRANSPORT, PROTOCOL_VERSION, 0, receiver, counter)


_RECEIVER_COUNTER = struct.Struct("<IQ")


def unpack_transport_header(data: bytes) -> tuple[int, int]:
    """Return (receiver, counter) of a transport message whose header was already checked."""
    receiver, counter = _RECEIVER_COUNTER.unpack_from(data, 4)
    return receiver, counter
