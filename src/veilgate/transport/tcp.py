"""TCP carrier: framed datagrams over asyncio streams, with TCP_NODELAY and bounded buffers.

Datagram semantics are kept: when a connection's write buffer is above its
high-water mark, a datagram is dropped and counted rather than queued without
bound (the tunnel's own TCP flows recover, as they would from loss on UDP).
A malformed stream closes that connection only.

With obfuscation on, a plain TCP connection begins with a proxy CONNECT (the client's request,
the gateway's ``200`` answer), and ``Shaping`` pads the first frames each side sends to sizes
drawn from those of ordinary web traffic, optionally each after a small random delay
(docs/protocol.md 14.4).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from veilgate.protocol import covers
from veilgate.transport.framing import (
    REQUEST,
    RESPONSE,
    FrameDecoder,
    FramingError,
    MaskedFrameDecoder,
    MaskedFrameEncoder,
    encode_frame,
)

log = logging.getLogger("veilgate.transport")

WRITE_HIGH_WATER = 1024 * 1024
READ_LIMIT = 256 * 1024

OnDatagrams = Callable[[list[bytes], "FramedConnection"], None]
"""Called with the complete datagrams of one read, in order (one call per read, not per datagram:
a receiver does its bookkeeping once per burst). It checks ``conn.closed`` between datagrams if
handling one can close the connection."""
OnClose = Callable[["FramedConnection"], None]

SEGMENT: Final = 1448
"""A full TCP segment's payload on a 1500-byte path with timestamps: the largest shaped write."""
SMALL_MAX: Final = 600
"""Shaped writes are either small (up to this) or a full segment, as requests, acknowledgements
and records of a web session are."""


@dataclass(frozen=True)
class Shaping:
    """Size and timing of the first frames on an obfuscated plain TCP connection."""

    frames: int = 8
    """How many of the first frames each side sends are padded (0: none)."""
    jitter: float = 0.0
    """Up to this many seconds of random delay before each of them (0: sent at once)."""


def shaped_size(n: int, rng: random.Random | None = None) -> int:
    """The size on the wire for a write of ``n`` bytes: at least ``n + 3`` (room for a padding
    frame), half the time a small write up to ``SMALL_MAX`` where ``n`` allows, else up to the
    end of a full segment (``SEGMENT``, or the segment after for longer writes)."""
    r = rng or random.SystemRandom()
    least = n + 3
    if least <= SMALL_MAX and r.random() < 0.5:
        return r.randint(least, SMALL_MAX)
    top = max(SEGMENT, -(-least // SEGMENT) * SEGMENT)
    return r.randint(max(least, top - 200), top)


class FramedConnection(asyncio.Protocol):
    """One TCP connection carrying framed datagrams. Hashable by identity."""

    def __init__(
        self,
        on_datagrams: OnDatagrams,
        on_close: OnClose,
        carrier: str = "tcp",
        stream_key: bytes | None = None,
        cover: tuple[str, bytes, str] | None = None,
        shaping: Shaping | None = None,
    ) -> None:
        """``cover``: (``REQUEST`` on the gateway or ``RESPONSE`` on the client, the cover key,
        the host name the client's request names), with ``stream_key`` only."""
        self.on_datagrams = on_datagrams
        self.carrier = carrier
        """``tcp``, or ``tls`` where this connection runs inside TLS (veilgate.transport.tls)."""
        self.on_close = on_close
        self.decoder: FrameDecoder
        self._encoder: MaskedFrameEncoder | None = None
        self._preamble = b""
        self._encode: Callable[[bytes], bytes]
        if stream_key is None:
            self.decoder = FrameDecoder()
            self._encode = encode_frame
        else:
            head, cover_key, host = cover if cover is not None else (None, None, "")
            self.decoder = MaskedFrameDecoder(stream_key, head=head, cover_key=cover_key)
            self._encoder = MaskedFrameEncoder(stream_key, cover_key if head == RESPONSE else None)
            self._encode = self._encoder.encode
            if head == RESPONSE and cover_key is not None:
                pad_to = 0 if shaping is None or not shaping.frames else shaped_size(400)
                self._preamble = covers.connect_request(cover_key, self._encoder.nonce, host, pad_to)
        self.shaping = shaping if self._encoder is not None else None
        self._shape_left = self.shaping.frames if self.shaping is not None else 0
        self._delayed: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[Any, ...] = ("", 0)
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0
        self.malformed = 0
        self.bad_head = False
        """The connection closed on a first head that was not the expected CONNECT or answer."""
        self.closed = False
        self._pending: list[bytes] = []
        self.connected: asyncio.Future[None] = asyncio.get_event_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer = transport.get_extra_info("peername") or ("", 0)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if self._preamble:
            transport.write(self._preamble)
            self._preamble = b""
        if not self.connected.done():
            self.connected.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except FramingError as exc:
            self.malformed += 1
            self.bad_head = isinstance(self.decoder, MaskedFrameDecoder) and self.decoder.in_head
            log.debug("closing a tcp connection: %s", exc)
            self.close()
            return
        decoder = self.decoder
        if isinstance(decoder, MaskedFrameDecoder) and decoder.reply and self.transport is not None:
            self.transport.write(decoder.reply)
            decoder.reply = b""
        if frames and not self.closed:
            self.frames_in += len(frames)
            self.on_datagrams(frames, self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("connection lost"))
        if not self.closed:
            self.closed = True
            self.on_close(self)

    def send(self, datagram: bytes) -> None:
        if self._pending:
            self.flush()  # what was queued goes first
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            self.dropped += 1
            return
        if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            self.dropped += 1
            return
        if self._shape_left or self._delayed:
            self._shaped([datagram])
        else:
            transport.write(self._encode(datagram))
        self.frames_out += 1

    def queue(self, datagram: bytes) -> bool:
        """Hold a datagram for the next :meth:`flush`, which writes all held frames at once
        (one system call for a burst instead of one per frame). True when the queue was empty,
        so the caller knows to flush this connection later."""
        first = not self._pending
        self._pending.append(datagram)
        return first

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            self.dropped += len(pending)
            return
        room = WRITE_HIGH_WATER - transport.get_write_buffer_size()
        if room <= 0:
            self.dropped += len(pending)
            return
        # Framed only when known to be written: a masked prefix takes keystream, which a frame
        # dropped after framing would leave the peer out of step with.
        kept, size = 0, 0
        while kept < len(pending) and size + len(pending[kept]) + 2 <= room:
            size += len(pending[kept]) + 2
            kept += 1
        if kept < len(pending):  # keep the frames that fit; drop the rest, as send() would
            self.dropped += len(pending) - kept
            pending = pending[:kept]
        encode = self._encode
        if self._shape_left or self._delayed:
            self._shaped(pending)
        else:
            transport.write(b"".join([encode(d) for d in pending]))
        self.frames_out += len(pending)

    # ------------------------------------------------------------ shaping

    def _shaped(self, datagrams: list[bytes]) -> None:
        """Write frames while shaping: each of the first ``shaping.frames`` alone and padded; each
        after a random delay when there is jitter (later frames wait behind them, in order)."""
        encoder, shaping, transport = self._encoder, self.shaping, self.transport
        assert encoder is not None and shaping is not None and transport is not None
        for datagram in datagrams:
            wire = encoder.encode(datagram)
            if self._shape_left:
                self._shape_left -= 1
                wire += encoder.padding(shaped_size(len(wire)) - len(wire))
            if shaping.jitter > 0:
                self._delayed.append(wire)
            else:
                transport.write(wire)
        if self._delayed and self._timer is None:
            self._schedule()

    def _schedule(self) -> None:
        assert self.shaping is not None
        delay = self.shaping.jitter * secrets.randbelow(1001) / 1000
        self._timer = asyncio.get_event_loop().call_later(delay, self._release)

    def _release(self) -> None:
        self._timer = None
        if not self._delayed:
            return
        wire = self._delayed.pop(0)
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            self.dropped += 1 + len(self._delayed)
            self._delayed.clear()
            return
        transport.write(wire)
        if self._delayed:
            self._schedule()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if not self.closed:
            self.closed = True
            self.on_close(self)

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other


def listening_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket listening on ``host`` (an IPv6 one takes IPv6 only) and ``port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve_tcp(
    host: str,
    port: int,
    on_datagrams: OnDatagrams,
    on_close: OnClose,
    stream_key: bytes | None = None,
    cover_key: bytes | None = None,
    shaping: Shaping | None = None,
    sock: socket.socket | None = None,
) -> asyncio.Server:
    """Listen for framed connections; each gets its own FramedConnection (``stream_key``: with
    masked length prefixes; ``cover_key``: after a proxy CONNECT; docs/protocol.md 14). ``sock``:
    a socket already listening there (a worker's, from the gateway's supervisor)."""
    cover = (REQUEST, cover_key, "") if cover_key is not None else None
    loop = asyncio.get_running_loop()
    sock = sock or listening_socket(host, port)
    return await loop.create_server(
        lambda: FramedConnection(on_datagrams, on_close, stream_key=stream_key, cover=cover, shaping=shaping),
        sock=sock,
    )


async def connect_tcp(
    host: str,
    port: int,
    on_datagrams: OnDatagrams,
    on_close: OnClose,
    timeout: float = 5.0,
    stream_key: bytes | None = None,
    cover_key: bytes | None = None,
    shaping: Shaping | None = None,
    host_name: str = "",
) -> FramedConnection:
    """Connect a framed connection (``cover_key``: begin with a proxy CONNECT naming
    ``host_name``, or ``host``)."""
    loop = asyncio.get_running_loop()
    cover = (RESPONSE, cover_key, host_name or host) if cover_key is not None else None
    _, conn = await asyncio.wait_for(
        loop.create_connection(
            lambda: FramedConnection(
                on_datagrams, on_close, stream_key=stream_key, cover=cover, shaping=shaping
            ),
            host,
            port,
        ),
        timeout,
    )
    return conn
