"""TCP framing, sans-IO: each datagram is prefixed by its length, 2 bytes big-endian.

This is the convention of udp-over-tcp tools; it lets the protocol's datagrams
travel unchanged over a stream. The decoder is bounded: a peer cannot make it
keep more than ``max_buffer`` bytes between reads (at most one partial frame
is ever kept, so the default bound is the largest frame).

With obfuscation on, the prefixes are masked (``MaskedFrameEncoder``, ``MaskedFrameDecoder``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Final

from veilgate.protocol.errors import RemoteProtocolError
from veilgate.protocol.obfs import STREAM_NONCE_LEN, chacha20

MAX_FRAME: Final = 65535
DEFAULT_MAX_BUFFER: Final = MAX_FRAME + 2


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
    """Frames with masked length prefixes (docs/protocol.md 14): the first call sends
    ``STREAM_NONCE_LEN`` random bytes before its frame; every length prefix is XORed with the next
    two bytes of ``ChaCha20(stream_key, nonce)``."""

    __slots__ = ("_nonce", "_stream")

    def __init__(self, stream_key: bytes) -> None:
        self._nonce = secrets.token_bytes(STREAM_NONCE_LEN)
        self._stream = chacha20(stream_key, self._nonce).encryptor().update

    def encode(self, datagram: bytes) -> bytes:
        frame = encode_frame(datagram)
        head = self._stream(frame[:2]) + frame[2:]
        if self._nonce:
            head, self._nonce = self._nonce + head, b""
        return head


class MaskedFrameDecoder(FrameDecoder):
    """The decoder of ``MaskedFrameEncoder``'s stream: the peer's nonce first, then masked frames."""

    __slots__ = ("_key", "_next", "_stream")

    def __init__(self, stream_key: bytes, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        super().__init__(max_buffer)
        self._key = stream_key
        self._stream: Callable[[bytes], bytes] | None = None
        self._next = 0
        """The unmasked length of the frame being received (0: its prefix is not read yet)."""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        if self._pos and (self._pos > 65536 or self._pos * 2 > len(buf)):
            del buf[: self._pos]
            self._pos = 0
        buf += data
        frames = []
        pos = self._pos
        end = len(buf)
        stream = self._stream
        if stream is None:
            if end - pos < STREAM_NONCE_LEN:
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
                if n == 0:
                    raise FramingError("zero-length frame")
            if end - pos - 2 < n:
                break
            frames.append(bytes(buf[pos + 2 : pos + 2 + n]))
            pos += 2 + n
            n = 0
        self._next = n
        if pos == end:
            buf.clear()
            pos = 0
        self._pos = pos
        if len(buf) - pos > self.max_buffer:
            raise FramingError("peer left more unframed bytes than the framing buffer holds")
        return frames
