"""TCP framing, sans-IO: each datagram is prefixed by its length, 2 bytes big-endian.

This is the convention of udp-over-tcp tools; it lets the protocol's datagrams
travel unchanged over a stream. The decoder is bounded: a peer cannot make it
keep more than ``max_buffer`` bytes between reads (at most one partial frame
is ever kept, so the default bound is the largest frame).
"""

from __future__ import annotations

from typing import Final

from veilgate.protocol.errors import RemoteProtocolError

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
