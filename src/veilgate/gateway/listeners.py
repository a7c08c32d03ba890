"""The gateway's sockets: UDP sockets and TCP listeners, and the endpoints clients are reached at.

An endpoint is the driver's object for where a datagram came from, handed to the protocol core
with each datagram and handed back with each datagram to send: a ``UdpEndpoint`` (a client's
address and the socket that reaches it) or a ``TcpEndpoint`` (a connection). The core sees only
``cookie_bytes()``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from veilgate.gateway.config import GatewayConfig
from veilgate.protocol import covers
from veilgate.transport.cover import DEFAULT_PAGE, CoverSite
from veilgate.transport.tcp import FramedConnection, OnDatagrams, Shaping, serve_tcp
from veilgate.transport.tls import serve_tls, server_context
from veilgate.transport.udp import UdpSender, enable_gro

if TYPE_CHECKING:
    from veilgate.gateway.worker import WorkerPlace

log = logging.getLogger("veilgate.gateway")

UDP_BUFFER = 4 * 1024 * 1024


class UdpSocket:
    """One listening UDP socket, its sender, and its number in the compiled data path."""

    __slots__ = ("gro", "number", "sock", "tx")

    def __init__(self, sock: socket.socket, offload: bool) -> None:
        self.sock = sock
        self.tx = UdpSender(sock, gso=offload)
        self.gro = offload and enable_gro(sock)
        self.number: int | None = None
        """The compiled data path's number for this socket, once it serves it."""


class UdpEndpoint:
    """A client's UDP address (and the socket that reaches it); equal when host and port are equal."""

    __slots__ = ("addr", "udp")
    transport = "udp"

    def __init__(self, addr: tuple[Any, ...], udp: UdpSocket) -> None:
        self.addr = addr[:2]
        self.udp = udp

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UdpEndpoint) and other.addr == self.addr

    def __hash__(self) -> int:
        return hash(self.addr)

    def cookie_bytes(self) -> bytes:
        return address_bytes(self.addr)

    def send(self, data: bytes) -> None:
        self.udp.tx.send(data, self.addr)

    def queue(self, data: bytes) -> None:
        """Send with the next flush of the socket's sender, where runs to one client share a GSO send."""
        self.udp.tx.queue(data, self.addr)


class TcpEndpoint:
    """A client's TCP or TLS connection; equal only to itself."""

    __slots__ = ("conn", "flush_list", "transport")

    def __init__(self, conn: FramedConnection, flush_list: list[FramedConnection]) -> None:
        self.conn = conn
        self.flush_list = flush_list
        self.transport = conn.carrier
        """``tcp`` or ``tls``."""

    def cookie_bytes(self) -> bytes:
        return address_bytes(self.conn.peer)

    def send(self, data: bytes) -> None:
        self.conn.send(data)

    def queue(self, data: bytes) -> None:
        """Send with the gateway's next flush, in one write with the frames queued before it."""
        if self.conn.queue(data):
            self.flush_list.append(self.conn)


Endpoint = UdpEndpoint | TcpEndpoint


class Listeners:
    """The UDP sockets, TLS and TCP listeners on the configured addresses, and the stream connections
    (TLS ones once their gate let them through: until then they are the cover site's)."""

    def __init__(
        self,
        config: GatewayConfig,
        on_tcp: OnDatagrams,
        gateway_public: bytes = b"",
        stream_key: bytes | None = None,
        counters: Counter[str] | None = None,
        inherited: WorkerPlace | None = None,
    ) -> None:
        self.inherited = inherited
        """A worker's sockets, opened by the gateway's supervisor (None: open them here)."""
        self.on_closed: Callable[[FramedConnection], None] | None = None
        self.gateway_public = gateway_public
        self.counters: Counter[str] = counters if counters is not None else Counter()
        """Where connections refused for their first bytes are counted (``drop-cover``)."""
        self.cover_key = covers.cover_key(gateway_public) if stream_key is not None else None
        self.shaping = Shaping(config.tcp_shape_frames, config.tcp_shape_jitter) if stream_key else None
        self.config = config
        self.stream_key = stream_key
        """With obfuscation on: the key that masks TCP length prefixes."""
        self.udp: list[UdpSocket] = []
        self.tcp_servers: list[asyncio.AbstractServer] = []
        self.tcp: dict[FramedConnection, TcpEndpoint] = {}
        self._on_tcp = on_tcp
        self._to_flush: list[FramedConnection] = []
        self._memo: tuple[Any, UdpEndpoint] | None = None

    async def open(self) -> None:
        """Bind UDP and listen on TLS and TCP on ``listen`` and ``listen6`` (IPv6 skipped where
        unavailable)."""
        cfg = self.config
        tls = None
        if cfg.tls_cert_file is not None and cfg.tls_key_file is not None:
            try:
                tls = server_context(str(cfg.tls_cert_file), str(cfg.tls_key_file))
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise OSError(
                    0,
                    f"cannot load the TLS certificate {cfg.tls_cert_file} and key {cfg.tls_key_file}: {exc}",
                ) from None
        site = CoverSite(cfg.cover_page if cfg.cover_page is not None else DEFAULT_PAGE)
        place = self.inherited
        for host in [cfg.listen, cfg.listen6]:
            if host is None:
                continue
            if place is not None:
                if host not in place.udp:
                    continue
                sock = socket.socket(fileno=place.udp[host])
            else:
                opened = udp_socket(host, cfg.udp_port)
                if opened is None:
                    continue
                sock = opened
            sock.setblocking(False)
            self.udp.append(UdpSocket(sock, cfg.udp_offload))
            if tls is not None:
                try:
                    server = await serve_tls(
                        host,
                        cfg.tls_port,
                        tls,
                        self.gateway_public,
                        site,
                        self._on_tcp,
                        self._tcp_closed,
                        socket.socket(fileno=place.tls[host]) if place is not None else None,
                    )
                except OSError as exc:
                    raise OSError(
                        exc.errno, f"cannot listen on TLS {host} port {cfg.tls_port}: {exc.strerror}"
                    ) from None
                self.tcp_servers.append(server)
            if cfg.tcp_port:
                try:
                    server = await serve_tcp(
                        host,
                        cfg.tcp_port,
                        self._on_tcp,
                        self._tcp_closed,
                        self.stream_key,
                        self.cover_key,
                        self.shaping,
                        socket.socket(fileno=place.tcp[host]) if place is not None else None,
                    )
                except OSError as exc:
                    raise OSError(
                        exc.errno, f"cannot listen on TCP {host} port {cfg.tcp_port}: {exc.strerror}"
                    ) from None
                self.tcp_servers.append(server)

    def close(self) -> None:
        for udp in self.udp:
            udp.sock.close()
        self.udp.clear()
        self._memo = None
        for server in self.tcp_servers:
            server.close()
        self.tcp_servers.clear()
        for conn in list(self.tcp):
            conn.close()

    def udp_endpoint(self, addr: Any, udp: UdpSocket) -> UdpEndpoint:
        """The endpoint for a datagram's sender.

        Datagrams in a row from one address share one endpoint object, so that the core's check
        for a roamed client is an identity test. Only the last sender is remembered (and forgotten
        when a session ends): no list of client addresses builds up here."""
        memo = self._memo
        if memo is not None and memo[0] == addr and memo[1].udp is udp:
            return memo[1]
        endpoint = UdpEndpoint(addr, udp)
        self._memo = (addr, endpoint)
        return endpoint

    def forget(self) -> None:
        """Forget the last sender (a session ended: no client address outlives it here)."""
        self._memo = None

    def tcp_endpoint(self, conn: FramedConnection) -> TcpEndpoint | None:
        """The endpoint of a connection; None (and the connection closed) beyond the configured most."""
        endpoint = self.tcp.get(conn)
        if endpoint is None:
            if len(self.tcp) >= self.config.max_tcp_connections:
                conn.close()
                return None
            endpoint = self.tcp[conn] = TcpEndpoint(conn, self._to_flush)
        return endpoint

    def _tcp_closed(self, conn: FramedConnection) -> None:
        """A connection closed; a session on it stays until it expires or the client moves."""
        self.tcp.pop(conn, None)
        if self.on_closed is not None:
            self.on_closed(conn)
        if conn.bad_head:
            self.counters["drop-cover"] += 1

    def flush(self) -> None:
        """Send everything queued on every socket and connection."""
        for udp in self.udp:
            udp.tx.flush()
        if self._to_flush:
            for conn in self._to_flush:
                conn.flush()
            self._to_flush.clear()

    def udp_figures(self, compiled: dict[str, int]) -> dict[str, object]:
        """Aggregate UDP output figures (the Python senders' plus the compiled path's ``compiled``)."""
        txs = [udp.tx for udp in self.udp]
        return {
            "gso": all(tx.gso for tx in txs) and not compiled.get("udp-gso-refused", 0),
            "gro": all(udp.gro for udp in self.udp),
            "datagrams_out": sum(tx.datagrams for tx in txs) + compiled.get("udp-datagrams-out", 0),
            "sends": sum(tx.syscalls for tx in txs) + compiled.get("udp-sends", 0),
            "dropped": sum(tx.dropped for tx in txs) + compiled.get("udp-send-dropped", 0),
        }


def udp_socket(host: str, port: int, reuseport: bool = False) -> socket.socket | None:
    """A UDP socket bound to ``host`` and ``port`` (None: IPv6 unavailable here, with a warning).
    ``reuseport``: one of the SO_REUSEPORT group of a many-worker gateway."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_BUFFER)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if family == socket.AF_INET6 and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            log.warning("IPv6 listening unavailable (%s); UDP on IPv4 only", exc.strerror)
            return None
        raise OSError(exc.errno, f"cannot listen on UDP {host} port {port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def address_bytes(addr: tuple[Any, ...]) -> bytes:
    """The packed IP address and the port (big-endian) of a socket address: what cookies bind to.

    On every handshake initiation, also under a flood, so ``inet_pton`` rather than ``ipaddress``.
    """
    host, port = str(addr[0]), int(addr[1])
    if ":" in host:
        return socket.inet_pton(socket.AF_INET6, host.partition("%")[0]) + port.to_bytes(2, "big")
    return socket.inet_pton(socket.AF_INET, host) + port.to_bytes(2, "big")


__all__ = ["Endpoint", "Listeners", "TcpEndpoint", "UdpEndpoint", "UdpSocket", "address_bytes", "udp_socket"]
