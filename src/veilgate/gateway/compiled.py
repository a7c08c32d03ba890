"""The gateway's side of the compiled data path: its peers follow the session table, and what it
passes on goes to the core.

``fastpath.GatewayPath`` reads the session table's ``routes`` and ``indices`` directly and serves,
without Python, every packet of a session reached over UDP whose keypair it may use. This module
tells each session's ``fastpath.Peer`` what the core decided (keys, socket, address, tunnel
addresses) and, after the compiled loops ran, hands the core their activity (``account``) and
what they left to it: packets no keypair could send, handshakes, control messages.
"""

from __future__ import annotations

import logging
import socket
import struct
from typing import TYPE_CHECKING, Any, cast

from veilgate import fastpath
from veilgate.fastpath.keypair import CompiledKeypair
from veilgate.gateway.listeners import Listeners, UdpEndpoint
from veilgate.gateway.sessions import RoutedPeer, SessionTable
from veilgate.protocol.gateway import GatewayProtocol, Session

if TYPE_CHECKING:
    from veilgate.gateway.daemon import Gateway

log = logging.getLogger("veilgate.gateway")


class CompiledGateway:
    """A ``fastpath.GatewayPath`` on the session table, and the bookkeeping after it runs."""

    def __init__(
        self,
        tun_fd: int,
        table: SessionTable,
        listeners: Listeners,
        core: GatewayProtocol,
        client_to_client: bool,
        vnet: bool = False,
    ) -> None:
        # The table's peers are all fastpath.Peer from attach() on (the C path skips any other value).
        routes = cast(dict[bytes, fastpath.Peer], table.routes)
        indices = cast(dict[int, fastpath.Peer], table.indices)
        self.path = fastpath.GatewayPath(tun_fd, routes, indices, client_to_client, vnet)
        if core.obfs is not None:
            self.path.protect(core.obfs.header_key)
        self.listeners = listeners
        self.core = core
        table.attach(fastpath.Peer, self.update_peer)

    def update_peer(self, peer: RoutedPeer, session: Session, addresses: tuple[bytes, ...]) -> None:
        """Tell the compiled path what the core decided for a live session."""
        assert isinstance(peer, fastpath.Peer)
        current = session.current
        send = current.keys if isinstance(current, CompiledKeypair) else None
        recv = tuple(kp.keys for kp in (current, session.previous) if isinstance(kp, CompiledKeypair))
        number, sockaddr = fastpath.ROUTE_NONE, None
        endpoint = session.endpoint
        if isinstance(endpoint, UdpEndpoint) and endpoint.udp.number is not None:
            sockaddr = sockaddr_bytes(endpoint.addr)
            if sockaddr is not None:
                number = endpoint.udp.number
        v4 = next((a for a in addresses if len(a) == 4), None)
        v6 = next((a for a in addresses if len(a) == 16), None)
        peer.update(send, recv, number, sockaddr, v4, v6)

    def take(self, gateway: Gateway, now: float) -> None:
        """After the compiled loops ran: account for what they did, handle what they passed on."""
        pending, touched = self.path.take()
        core = self.core
        for peer in touched:
            activity = peer.take()
            session = peer.owner
            if isinstance(session, Session) and session.id in core.sessions:
                core.account(session, activity)
        if not pending:
            return
        sockets = {udp.number: udp for udp in self.listeners.udp}
        for item in pending:
            if item.kind == fastpath.PENDING_TUN:
                gateway.route(item.data, now, False)
                continue
            udp = sockets.get(item.sock)
            if udp is None or item.addr is None:
                continue
            endpoint = self.listeners.udp_endpoint(item.addr, udp)
            if item.kind == fastpath.PENDING_DATAGRAM:
                packet = gateway.receive(item.data, endpoint, now)
                if packet is not None:
                    gateway.deliver(packet)
            else:
                core.receive_opened(item.index, item.data, endpoint, now)
        self.listeners.flush()


def sockaddr_bytes(addr: tuple[Any, ...]) -> bytes | None:
    """The ``struct sockaddr_in``/``sockaddr_in6`` of a (host, port) as Python's socket module gives it;
    None for one the compiled path cannot use (it leaves that client to Python)."""
    host, port = str(addr[0]), int(addr[1])
    try:
        if ":" not in host:
            return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", port, socket.inet_aton(host))
        name, _, scope = host.partition("%")
        scope_id = 0
        if scope:
            scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
        packed = socket.inet_pton(socket.AF_INET6, name)
        return (
            struct.pack("=H", socket.AF_INET6)
            + struct.pack("!HI16s", port, 0, packed)
            + struct.pack("=I", scope_id)
        )
    except (OSError, ValueError):
        return None


__all__ = ["CompiledGateway"]
