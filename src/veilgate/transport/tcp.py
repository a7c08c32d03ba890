"""TCP carrier: framed datagrams over asyncio streams, with TCP_NODELAY and bounded buffers.

Datagram semantics are kept: when a connection's write buffer is above its
high-water mark, a datagram is dropped and counted rather than queued without
bound (the tunnel's own TCP flows recover, as they would from loss on UDP).
A malformed stream closes that connection only.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from veilgate.transport.framing import (
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


class FramedConnection(asyncio.Protocol):
    """One TCP connection carrying framed datagrams. Hashable by identity."""

    def __init__(
        self,
        on_datagrams: OnDatagrams,
        on_close: OnClose,
        carrier: str = "tcp",
        stream_key: bytes | None = None,
    ) -> None:
        self.on_datagrams = on_datagrams
        self.carrier = carrier
        """``tcp``, or ``tls`` where this connection runs inside TLS (veilgate.transport.tls)."""
        self.on_close = on_close
        self.decoder = FrameDecoder() if stream_key is None else MaskedFrameDecoder(stream_key)
        self._encode = encode_frame if stream_key is None else MaskedFrameEncoder(stream_key).encode
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[Any, ...] = ("", 0)
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0
        self.malformed = 0
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
        if not self.connected.done():
            self.connected.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except FramingError as exc:
            self.malformed += 1
            log.debug("closing a tcp connection: %s", exc)
            self.close()
            return
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
        transport.write(b"".join([encode(d) for d in pending]))
        self.frames_out += len(pending)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if not self.closed:
            self.closed = True
            self.on_close(self)

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other


async def serve_tcp(
    host: str, port: int, on_datagrams: OnDatagrams, on_close: OnClose, stream_key: bytes | None = None
) -> asyncio.Server:
    """Listen for framed connections; each gets its own FramedConnection (``stream_key``: with
    masked length prefixes, docs/protocol.md 14)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return await loop.create_server(
        lambda: FramedConnection(on_datagrams, on_close, stream_key=stream_key), sock=sock
    )


async def connect_tcp(
    host: str,
    port: int,
    on_datagrams: OnDatagrams,
    on_close: OnClose,
    timeout: float = 5.0,
    stream_key: bytes | None = None,
) -> FramedConnection:
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(
        loop.create_connection(
            lambda: FramedConnection(on_datagrams, on_close, stream_key=stream_key), host, port
        ),
        timeout,
    )
    return conn
