"""Keyed obfuscation of the wire format (docs/protocol.md section 14), sans-IO.

With obfuscation on, no message shows a fixed byte, a fixed size or a counter:

- a handshake message ``M`` (types 1 to 4) travels as
  ``nonce (12) | ChaCha20(K_hs, 0^4 | nonce)(len(M) (2, big-endian) | M | padding)``, its total
  length drawn at random from a range; the padding is discarded by the receiver, ``M`` is
  authenticated by its own macs and AEAD tags exactly as without obfuscation;
- a transport message keeps its layout, with QUIC-style header protection (RFC 9001, 5.4): the
  sample is the first 16 bytes of the AEAD output (bytes 16..31), bytes 0..7 (type, version,
  reserved, receiver index) are masked with ``AES-128-ECB(K_hdr, sample)``, bytes 8..15 (the
  counter) with ``AES-128-ECB(K_ctr, sample)``, where ``K_ctr`` is derived from the sending
  direction's transport key: it is per session and per direction.

``K_hs`` and ``K_hdr`` are derived from the gateway's static public key: whoever knows that key
(every client, and whoever reads the provider document) can remove the gateway-wide layer. The
counter stays hidden from them. TCP framing (``veilgate.transport.framing``) masks its length
prefixes with a keystream under ``K_stream``, also derived from the gateway's public key.

Every function here that reads network input returns ``None`` for bytes it cannot unwrap; none
raises on them.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Mapping
from typing import Final, Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from veilgate.protocol.errors import RemoteProtocolError
from veilgate.protocol.messages import HDR_TRANSPORT, TRANSPORT_MIN_LEN

LABEL_HEADER: Final = b"veilgate obfs header v1"
LABEL_HANDSHAKE: Final = b"veilgate obfs handshake v1"
LABEL_STREAM: Final = b"veilgate obfs stream v1"
LABEL_COUNTER: Final = b"veilgate obfs counter v1"

HP_KEY_LEN: Final = 16
"""Header-protection keys are AES-128 keys."""
SAMPLE_OFFSET: Final = 16
"""A transport message's sample: the first 16 bytes of its AEAD output (the tag of a keepalive)."""
SAMPLE_LEN: Final = 16
MASKED_HEAD_LEN: Final = 8
"""Bytes 0..7 of a transport message are masked with the gateway-wide key, 8..15 with the session's."""
HS_NONCE_LEN: Final = 12
HS_LENGTH_LEN: Final = 2
HS_OVERHEAD: Final = HS_NONCE_LEN + HS_LENGTH_LEN
HS_WIRE_MAX: Final = 1440
"""Largest wrapped handshake message: 1468 bytes in IPv4 and UDP, 1488 in IPv6, under a 1500 MTU."""
HS_PAD_MIN: Final = 16
"""Every wrapped handshake message carries at least this much padding."""
STREAM_NONCE_LEN: Final = 12
"""Each side of an obfuscated TCP connection sends this many random bytes first."""

_U16 = struct.Struct(">H")


def derive_key(label: bytes, material: bytes, size: int) -> bytes:
    """``BLAKE2s(material, key=label, digest_size=size)``: every obfuscation key is one of these."""
    return hashlib.blake2s(material, key=label, digest_size=size).digest()


def counter_key(transport_key: bytes) -> bytes:
    """The per-direction counter-protection key of a transport key."""
    return derive_key(LABEL_COUNTER, transport_key, HP_KEY_LEN)


def ecb(key: bytes) -> Cipher[modes.ECB]:
    # One block per mask, a pseudorandom function of the sample, as RFC 9001 5.4.3.
    return Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305


def chacha20(key: bytes, nonce12: bytes) -> Cipher[None]:
    """ChaCha20 with a 96-bit nonce and the block counter from 0 (OpenSSL's 16-byte IV form)."""
    return Cipher(algorithms.ChaCha20(key, b"\x00\x00\x00\x00" + nonce12), mode=None)


class CounterKey(Protocol):
    """A keypair's side of header protection: the counter under its per-session key."""

    def unmask_counter(self, data: bytes) -> int: ...


class Obfuscation:
    """The gateway-wide obfuscation keys of one gateway, from its static public key."""

    __slots__ = ("_hdr", "handshake_key", "header_key", "stream_key")

    def __init__(self, gateway_public: bytes) -> None:
        self.header_key = derive_key(LABEL_HEADER, gateway_public, HP_KEY_LEN)
        self.handshake_key = derive_key(LABEL_HANDSHAKE, gateway_public, 32)
        self.stream_key = derive_key(LABEL_STREAM, gateway_public, 32)
        self._hdr = ecb(self.header_key).encryptor().update

    def open(self, data: bytes, keypairs: Mapping[int, CounterKey]) -> bytes:
        """The message an obfuscated datagram carries, in the clear: a transport message whose
        receiver index names one of ``keypairs``, or a wrapped handshake message. Raises
        ``RemoteProtocolError`` for anything else."""
        head = self.unmask_head(data)
        if head is not None:
            kp = keypairs.get(int.from_bytes(head[4:8], "little"))
            if kp is None:
                raise RemoteProtocolError("unknown receiver index", "unknown-index")
            return head + kp.unmask_counter(data).to_bytes(8, "little") + data[16:]
        message = self.unwrap(data)
        if message is None or message[:4] == HDR_TRANSPORT:
            raise RemoteProtocolError("not an obfuscated message", "obfs")
        return message

    # ------------------------------------------------------------ handshake messages

    def wrap(self, message: bytes) -> bytes:
        """A handshake message (types 1 to 4) wrapped, with padding to a random total length."""
        base = HS_OVERHEAD + len(message) + HS_PAD_MIN
        total = base + secrets.randbelow(max(HS_WIRE_MAX, base) - base + 1)
        nonce = secrets.token_bytes(HS_NONCE_LEN)
        body = _U16.pack(len(message)) + message + bytes(total - base + HS_PAD_MIN)
        return nonce + chacha20(self.handshake_key, nonce).encryptor().update(body)

    def unwrap(self, data: bytes) -> bytes | None:
        """The handshake message inside ``data``, or None if it holds none."""
        if len(data) < HS_OVERHEAD + HS_PAD_MIN + 4:
            return None
        dec = chacha20(self.handshake_key, data[:HS_NONCE_LEN]).decryptor().update
        (n,) = _U16.unpack(dec(data[HS_NONCE_LEN:HS_OVERHEAD]))
        if n < 4 or HS_OVERHEAD + n + HS_PAD_MIN > len(data):
            return None
        return dec(data[HS_OVERHEAD : HS_OVERHEAD + n])

    # ------------------------------------------------------------ transport messages

    def unmask_head(self, data: bytes) -> bytes | None:
        """Bytes 0..7 of a protected transport message (header and receiver index) in the clear,
        or None if ``data`` is not a transport message under this gateway's key."""
        if len(data) < TRANSPORT_MIN_LEN:
            return None
        mask = self._hdr(data[SAMPLE_OFFSET : SAMPLE_OFFSET + SAMPLE_LEN])
        head = (int.from_bytes(data[:8], "little") ^ int.from_bytes(mask[:8], "little")).to_bytes(8, "little")
        return head if head[:4] == HDR_TRANSPORT else None


class HeaderProtection:
    """One keypair's transport header protection: masks its sealed datagrams and unmasks counters."""

    __slots__ = ("_ctr_open", "_ctr_seal", "_hdr")

    def __init__(self, header_key: bytes, send_key: bytes, recv_key: bytes) -> None:
        self._hdr = ecb(header_key).encryptor().update
        self._ctr_seal = ecb(counter_key(send_key)).encryptor().update
        self._ctr_open = ecb(counter_key(recv_key)).encryptor().update

    def protect(self, datagram: bytes) -> bytes:
        sample = datagram[SAMPLE_OFFSET : SAMPLE_OFFSET + SAMPLE_LEN]
        mask = self._hdr(sample)[:8] + self._ctr_seal(sample)[:8]
        head = int.from_bytes(datagram[:16], "little") ^ int.from_bytes(mask, "little")
        return head.to_bytes(16, "little") + datagram[16:]

    def counter(self, data: bytes) -> int:
        """The counter of a received protected datagram (at least TRANSPORT_MIN_LEN bytes)."""
        mask = self._ctr_open(data[SAMPLE_OFFSET : SAMPLE_OFFSET + SAMPLE_LEN])
        return int.from_bytes(data[8:16], "little") ^ int.from_bytes(mask[:8], "little")
