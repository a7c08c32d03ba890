"""TCP framing, sans-IO: each datagram is prefixed by its length, 2 bytes big-endian.

This is the convention of udp-over-tcp tools; it lets the protocol's datagrams
travel unchanged over a stream. The decoder is bounded: a peer cannot make it
keep more than ``max_buffer`` bytes between reads (at most one partial frame
is ever kept, so the default bound is the largest frame).

With obfuscation on, the prefixes are masked (``MaskedFrameEncoder``, ``MaskedFrameDecoder``), a
plain TCP stream begins with a proxy CONNECT (``veilgate.protocol.covers``), and a prefix with its
top bit set announces padding, which the decoder discards (docs/protocol.md 14.4).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Final

from veilgate.protocol import covers
from veilgate.protocol.errors import RemoteProtocolError
from veilgate.protocol.obfs import STREAM_NONCE_LEN, chacha20

MAX_FRAME: Final = 65535
DEFAULT_MAX_BUFFER: Final = MAX_FRAME + 2
PAD_FLAG: Final = 0x8000
"""In a masked prefix: the frame is padding (its length the low 15 bits), discarded on receipt."""
MAX_MASKED_FRAME: Final = PAD_FLAG - 1
REQUEST: Final = "request"
RESPONSE: Final = "response"


class FramingError(RemoteProtocolError):
    def __init__(self, message: str) -> None:
        super().__init__(message, "framing")


def encode_frame(datagram: bytes) -> bytes:
    n = len(datagram)
    if not 0 < n <= MAX_FRAME:
        raise ValueError(f"a frame carries 1 to {MAX_FRAME} bytes, not {n}")
    return n.to_bytes(2, "big") + datagram


class FrameDecoder:
    __slots__ = ("_buf", "_pos", "max_buffer")

    def __init__(self, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        if max_buffer < MAX_FRAME + 2:
            raise ValueError("the buffer must hold at least one full frame")
        self._buf = bytearray()
        self._pos = 0
        self.max_buffer = max_buffer

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete frames, in order."""
        buf = self._buf
        if self._pos and (self._pos > 65536 or self._pos * 2 > len(buf)):
            del buf[: self._pos]  # compact now and then, not on every frame
            self._pos = 0
        buf += data
        frames = []
        pos = self._pos
        end = len(buf)
        while end - pos >= 2:
            n = (buf[pos] << 8) | buf[pos + 1]
            if n == 0:
                raise FramingError("zero-length frame")
            if end - pos - 2 < n:
                break
            frames.append(bytes(buf[pos + 2 : pos + 2 + n]))
            pos += 2 + n
        if pos == end:
            buf.clear()
            pos = 0
        self._pos = pos
        if len(buf) - pos > self.max_buffer:
            raise FramingError("peer left more unframed bytes than the framing buffer holds")
        return frames


class MaskedFrameEncoder:
    """Frames with masked length prefixes (docs/protocol.md 14): every length prefix is XORed with
    the next two bytes of ``ChaCha20(stream_key, nonce)``. The gateway's side sends its random
    ``nonce`` before its first frame; the client's side sends it in ``covers.connect_request``, which
    goes first on the connection (``cover_key``)."""

    __slots__ = ("_nonce", "_stream", "nonce")

    def __init__(self, stream_key: bytes, cover_key: bytes | None = None) -> None:
        self.nonce = secrets.token_bytes(STREAM_NONCE_LEN)
        self._nonce = self.nonce if cover_key is None else b""
        self._stream = chacha20(stream_key, self.nonce).encryptor().update

    def encode(self, datagram: bytes) -> bytes:
        n = len(datagram)
        if not 0 < n <= MAX_MASKED_FRAME:
            raise ValueError(f"a masked frame carries 1 to {MAX_MASKED_FRAME} bytes, not {n}")
        head = self._stream(n.to_bytes(2, "big")) + datagram
        if self._nonce:
            head, self._nonce = self._nonce + head, b""
        return head

    def padding(self, size: int) -> bytes:
        """A padding frame of ``size`` bytes on the wire (3 to ``MAX_MASKED_FRAME + 2``)."""
        if not 3 <= size <= MAX_MASKED_FRAME + 2:
            raise ValueError(f"a padding frame takes 3 to {MAX_MASKED_FRAME + 2} bytes, not {size}")
        head = self._stream((PAD_FLAG | (size - 2)).to_bytes(2, "big")) + secrets.token_bytes(size - 2)
        if self._nonce:
            head, self._nonce = self._nonce + head, b""
        return head


class MaskedFrameDecoder(FrameDecoder):
    """The decoder of ``MaskedFrameEncoder``'s stream: a head first where one is expected
    (``REQUEST`` on the gateway, ``RESPONSE`` on the client, with ``cover_key``), the peer's nonce
    (unless the request carried it), then masked frames; padding frames are dropped and counted.
    A gateway's decoder holds the response to a valid request in ``reply`` until it is taken."""

    __slots__ = ("_cover_key", "_head", "_key", "_next", "_stream", "padding", "reply")

    def __init__(
        self,
        stream_key: bytes,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        head: str | None = None,
        cover_key: bytes | None = None,
    ) -> None:
        super().__init__(max_buffer)
        if (head is None) != (cover_key is None) or head not in (None, REQUEST, RESPONSE):
            raise ValueError("a head (request or response) is expected with a cover key, and only then")
        self._key = stream_key
        self._cover_key = cover_key
        self._head = head
        self._stream: Callable[[bytes], bytes] | None = None
        self._next = 0
        """The unmasked length of the frame being received (0: its prefix is not read yet)."""
        self.padding = 0
        """Padding bytes received and discarded."""
        self.reply = b""

    @property
    def in_head(self) -> bool:
        """Whether the head is still expected."""
        return self._head is not None

    def _read_head(self, buf: bytearray, pos: int) -> int | None:
        """Where the stream continues after the head, or None while the head is incomplete."""
        end = buf.find(b"\r\n\r\n", pos, pos + covers.HEAD_MAX)
        if end < 0:
            if len(buf) - pos >= covers.HEAD_MAX:
                raise FramingError("no complete head in its first bytes")
            return None
        head = bytes(buf[pos : end + 4])
        if self._head == REQUEST:
            assert self._cover_key is not None
            accepted = covers.accept_connect(self._cover_key, head)
            if accepted is None:
                raise FramingError("not a CONNECT request of this gateway")
            nonce, self.reply = accepted
            self._stream = chacha20(self._key, nonce).decryptor().update
        elif not covers.is_connect_response(head):
            raise FramingError("not the CONNECT answer")
        self._head = None
        return end + 4

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        if self._pos and (self._pos > 65536 or self._pos * 2 > len(buf)):
            del buf[: self._pos]
            self._pos = 0
        buf += data
        frames = []
        pos = self._pos
        if self._head is not None:
            after = self._read_head(buf, pos)
            if after is None:
                return []
            pos = self._pos = after
        end = len(buf)
        stream = self._stream
        if stream is None:
            if end - pos < STREAM_NONCE_LEN:
                self._pos = pos
                return []
            stream = self._stream = (
                chacha20(self._key, bytes(buf[pos : pos + STREAM_NONCE_LEN])).decryptor().update
            )
            pos += STREAM_NONCE_LEN
        n = self._next
        while True:
            if not n:
                if end - pos < 2:
                    break
                prefix = stream(bytes(buf[pos : pos + 2]))
                n = (prefix[0] << 8) | prefix[1]
                if n in (0, PAD_FLAG):
                    raise FramingError("zero-length frame")
            size = n & MAX_MASKED_FRAME
            if end - pos - 2 < size:
                break
            if n & PAD_FLAG:
                self.padding += size
            else:
                frames.append(bytes(buf[pos + 2 : pos + 2 + size]))
            pos += 2 + size
            n = 0
        self._next = n
        if pos == end:
            buf.clear()
            pos = 0
        self._pos = pos
        if len(buf) - pos > self.max_buffer:
            raise FramingError("peer left more unframed bytes than the framing buffer holds")
        return frames
