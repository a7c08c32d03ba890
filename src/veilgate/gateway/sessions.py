"""The gateway's one table of sessions: each session's tunnel addresses and compiled-path peer.

The protocol core owns a session's keys, endpoint and counters (``GatewayProtocol.sessions``, its
index table). Everything the daemon adds to a session lives in one ``Lease`` here: the addresses
drawn from the pools, the routes from those addresses, and the peer the compiled data path serves
it through. ``routes`` (tunnel address -> peer) and ``indices`` (receiver index -> peer) are the
dictionaries the compiled path reads directly, and the pure-Python path routes through the same
``routes``: every lookup is one dictionary access, and ending a session touches only its own
entries. Nothing here is written to disk or logged.

The table also keeps the totals a status query and the metrics endpoint report: a session's byte
and packet counts go into ``closed`` when it ends, so that the totals (``traffic``) never go down,
and ``moves`` counts sessions that changed transport (UDP to TCP or back) on the way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from veilgate.gateway.pool import AddressPool, IPAddress
from veilgate.protocol.gateway import Session
from veilgate.protocol.keypair import Keypair


class RoutedPeer(Protocol):
    """What ``routes`` and ``indices`` map to: ``fastpath.Peer``, or ``PythonPeer`` without it."""

    owner: object


class PythonPeer:
    """The pure-Python data path's peer: only the session it stands for."""

    __slots__ = ("owner",)

    def __init__(self, owner: object = None) -> None:
        self.owner = owner


@dataclass(eq=False, slots=True)
class Lease:
    """What the daemon holds for one session, in memory only."""

    session: Session
    peer: RoutedPeer
    addresses: tuple[IPAddress, ...] = ()
    indices: tuple[int, ...] = ()
    transport: str | None = None
    """The transport the session was last seen on."""


TRAFFIC = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")


class SessionTable:
    """Leases by session id, with O(1) lookups by tunnel address and by receiver index."""

    def __init__(
        self,
        pool4: AddressPool,
        pool6: AddressPool | None,
        new_peer: Callable[[Session], RoutedPeer] = PythonPeer,
        update_peer: Callable[[RoutedPeer, Session, tuple[bytes, ...]], None] | None = None,
    ) -> None:
        self.pool4 = pool4
        self.pool6 = pool6
        self.routes: dict[bytes, RoutedPeer] = {}
        """Packed tunnel address -> the peer of the session that holds it."""
        self.indices: dict[int, RoutedPeer] = {}
        """Receiver index of a live keypair -> the peer of its session."""
        self._leases: dict[int, Lease] = {}
        self.closed: Counter[str] = Counter(dict.fromkeys(TRAFFIC, 0))
        """Bytes and packets of the sessions that ended (rx: from clients, tx: to them)."""
        self.moves: Counter[tuple[str, str]] = Counter()
        """(old transport, new transport) -> how many times a session moved so."""
        self._new_peer = new_peer
        self._update_peer = update_peer

    def __len__(self) -> int:
        return len(self._leases)

    def attach(
        self,
        new_peer: Callable[[Session], RoutedPeer],
        update_peer: Callable[[RoutedPeer, Session, tuple[bytes, ...]], None],
    ) -> None:
        """Serve sessions through a compiled data path from now on (before any session exists):
        ``new_peer`` makes a session's peer there, ``update_peer`` tells it what changed."""
        assert not self._leases, "attach before the first session"
        self._new_peer = new_peer
        self._update_peer = update_peer

    def traffic(self) -> dict[str, int]:
        """Bytes and packets of every session since the start, live ones included: never goes down."""
        out = dict(self.closed)
        for lease in self._leases.values():
            session = lease.session
            out["rx_bytes"] += session.rx_bytes
            out["tx_bytes"] += session.tx_bytes
            out["rx_packets"] += session.rx_packets
            out["tx_packets"] += session.tx_packets
        return out

    def lease(self, session_id: int) -> Lease | None:
        return self._leases.get(session_id)

    def session_to(self, address: bytes) -> Session | None:
        """The session that holds a packed tunnel address (as ``ip.destination`` gives it)."""
        peer = self.routes.get(address)
        owner = peer.owner if peer is not None else None
        return owner if isinstance(owner, Session) else None

    def open(self, session: Session) -> tuple[IPAddress, IPAddress | None]:
        """Draw a session's addresses (IPv4, and IPv6 if there is a pool) and route them to it.

        Raises ``PoolExhausted``, leaving nothing behind."""
        v4 = self.pool4.allocate()
        try:
            v6 = self.pool6.allocate() if self.pool6 is not None else None
        except Exception:
            self.pool4.release(v4)
            raise
        lease = self._lease_for(session)
        for address in lease.addresses:
            self._drop_route(address, lease)
        lease.addresses = (v4,) if v6 is None else (v4, v6)
        for address in lease.addresses:
            self.routes[address.packed] = lease.peer
        return v4, v6

    def follow(self, session: Session, alive: bool) -> None:
        """The core changed a session's keypairs, endpoint or addresses (or ended it): follow."""
        if not alive:
            self.close(session.id)
            return
        lease = self._lease_for(session)
        transport = getattr(session.endpoint, "transport", None)
        if transport != lease.transport:
            if lease.transport is not None and transport is not None:
                self.moves[(lease.transport, transport)] += 1
            lease.transport = transport
        peer = lease.peer
        keypairs: list[Keypair] = [kp for kp in (session.current, session.previous) if kp is not None]
        indices = tuple(kp.local_index for kp in keypairs)
        for index in lease.indices:
            if self.indices.get(index) is peer:  # unless another session took the index over meanwhile
                del self.indices[index]
        for index in indices:
            self.indices[index] = peer
        lease.indices = indices
        if self._update_peer is not None:
            self._update_peer(peer, session, tuple(a.packed for a in lease.addresses))

    def close(self, session_id: int) -> None:
        """A session ended: its addresses go back to the pools, its routes and indices go."""
        lease = self._leases.pop(session_id, None)
        if lease is None:
            return
        session = lease.session
        closed = self.closed
        closed["rx_bytes"] += session.rx_bytes
        closed["tx_bytes"] += session.tx_bytes
        closed["rx_packets"] += session.rx_packets
        closed["tx_packets"] += session.tx_packets
        for address in lease.addresses:
            self._drop_route(address, lease)
            pool = self.pool4 if address.version == 4 else self.pool6
            if pool is not None:
                pool.release(address)
        for index in lease.indices:
            if self.indices.get(index) is lease.peer:
                del self.indices[index]
        lease.peer.owner = None

    def _lease_for(self, session: Session) -> Lease:
        lease = self._leases.get(session.id)
        if lease is None:
            lease = self._leases[session.id] = Lease(session, self._new_peer(session))
        return lease

    def _drop_route(self, address: IPAddress, lease: Lease) -> None:
        if self.routes.get(address.packed) is lease.peer:
            del self.routes[address.packed]


__all__ = ["TRAFFIC", "Lease", "PythonPeer", "RoutedPeer", "SessionTable"]
