"""One worker of a many-worker gateway: what it owns, and what it passes to the other workers.

A ``WorkerLink`` sits between a worker's sockets and its protocol core (``Gateway.receive``,
``Gateway.route``): what belongs to another worker goes to it over the relay
(``veilgate.gateway.relay``), and what the other workers pass here is handed to the core as if it
had arrived on this worker's own socket. The ownership rule is ``veilgate.gateway.shard``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veilgate.gateway.listeners import UdpEndpoint, UdpSocket
from veilgate.gateway.relay import (
    HANDOFF,
    KEY_GONE,
    KEY_HELD,
    RESUME_GONE,
    RESUME_HELD,
    STREAM_IN,
    STREAM_OUT,
    TUN_IN,
    UDP_IN,
    Relay,
    decode_addr,
    decode_handoff,
    decode_stream,
    encode_addr,
)
from veilgate.gateway.shard import LOW32, Shard
from veilgate.protocol import ip, messages
from veilgate.protocol.constants import REJECT_AFTER_TIME
from veilgate.protocol.events import Handoff
from veilgate.protocol.obfs import Obfuscation
from veilgate.transport.tcp import FramedConnection

if TYPE_CHECKING:
    from veilgate.gateway.daemon import Gateway


@dataclass(frozen=True)
class WorkerPlace:
    """What the supervisor hands a worker: its place among the workers and its open descriptors."""

    shard: Shard
    tun_fd: int
    udp: dict[str, int] = field(default_factory=dict)
    """Listening host -> this worker's UDP socket of the SO_REUSEPORT group."""
    tcp: dict[str, int] = field(default_factory=dict)
    """Listening host -> the plain TCP listening socket all workers accept on."""
    tls: dict[str, int] = field(default_factory=dict)
    """Listening host -> the TLS listening socket all workers accept on."""
    vnet: bool = False
    """The TUN queues were opened with IFF_VNET_HDR (all of them, or none)."""


def worker_status_socket(path: Path, k: int) -> Path:
    """Where worker ``k`` answers status queries (the supervisor's socket is ``path``)."""
    return path.with_name(f"{path.name}.{k}")


class RelayedStream:
    """A client's stream connection that another worker accepted: what this worker sends to the
    client goes to that worker, which writes it on the connection. Equal per connection."""

    __slots__ = ("number", "relay", "transport", "worker")

    def __init__(self, relay: Relay, worker: int, number: int, carrier: str) -> None:
        self.relay = relay
        self.worker = worker
        self.number = number
        self.transport = carrier

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RelayedStream) and (other.worker, other.number) == (self.worker, self.number)

    def __hash__(self) -> int:
        return hash((self.worker, self.number))

    def cookie_bytes(self) -> bytes:
        return b""  # handshake initiations are never relayed: nothing asks

    def send(self, data: bytes) -> None:
        self.relay.stream_out(self.worker, self.number, data)

    queue = send


class WorkerLink:
    """A worker's side of the relay, for its ``Gateway``."""

    def __init__(self, gateway: Gateway, shard: Shard, relay: Relay, obfs: Obfuscation | None) -> None:
        self.gateway = gateway
        self.shard = shard
        self.relay = relay
        self.obfs = obfs
        self.counters: Counter[str] = relay.counters
        self.lent: dict[int, tuple[int, float]] = {}
        """Receiver index this worker drew -> (the worker its session went to, when)."""
        self.resume_owner: dict[bytes, int] = {}
        """Resume token -> the other worker that holds its session."""
        self.key_owner: dict[bytes, int] = {}
        """Static key -> the other worker where a live session is bound to it."""
        self.announced: dict[int, tuple[bytes | None, frozenset[bytes]]] = {}
        """Session id -> the resume token and the keys last announced for it."""
        self._numbers: dict[FramedConnection, int] = {}
        self._conns: dict[int, FramedConnection] = {}
        self._next = 1
        self._streams: dict[tuple[int, int], RelayedStream] = {}
        self._holds: Callable[[int], bool] = gateway.core.holds_index

    # ------------------------------------------------------------ what goes elsewhere

    def owner_of(self, data: bytes) -> int | None:
        """The other worker a datagram belongs to, or None if it is this worker's (or nobody's)."""
        index = self._receiver(data)
        if index is None or self._holds(index):
            return None
        lent = self.lent.get(index)
        if lent is not None:
            return lent[0]
        owner = self.shard.owner_of_index(index)
        return None if owner == self.shard.k else owner

    def _receiver(self, data: bytes) -> int | None:
        """The receiver index of a transport message or message 3 (plain or obfuscated)."""
        obfs = self.obfs
        if obfs is None:
            if len(data) >= 8 and data[0] in (messages.TYPE_TRANSPORT, messages.TYPE_HANDSHAKE_FINAL):
                return int.from_bytes(data[4:8], "little")
            return None
        head = obfs.unmask_head(data)
        if head is None:
            message = obfs.unwrap(data)
            if message is None or len(message) < 8 or message[0] != messages.TYPE_HANDSHAKE_FINAL:
                return None
            head = message
        return int.from_bytes(head[4:8], "little")

    def pass_on(self, owner: int, data: bytes, endpoint: object) -> None:
        if isinstance(endpoint, UdpEndpoint):
            self.relay.udp_in(owner, endpoint.addr, data)
        else:
            conn = getattr(endpoint, "conn", None)
            if isinstance(conn, FramedConnection):
                self.relay.stream_in(owner, self.number_of(conn), conn.carrier, data)

    def pass_packet(self, packet: bytes) -> bool:
        """Pass a TUN packet to the worker owning its destination; False if that is this worker."""
        dst = ip.destination(packet)
        owner = self.shard.owner_of_address(int.from_bytes(dst[-4:], "big") & LOW32)
        if owner == self.shard.k or len(dst) not in (4, 16):
            return False
        self.relay.send(owner, TUN_IN, packet)
        return True

    def elsewhere(self, resume: bytes | None, key: bytes) -> bool:
        """Whether another worker holds the session ``resume`` names, or one bound to ``key``."""
        return (resume is not None and resume in self.resume_owner) or key in self.key_owner

    def hand_off(self, handoff: Handoff, endpoint: object) -> None:
        """Message 3 belongs to another worker's session (its resume token or its key): give that
        worker the handshake, and lend it the index."""
        owner = self.resume_owner.get(handoff.resume, self.key_owner.get(handoff.static_public))
        if owner is None:
            return
        if isinstance(endpoint, UdpEndpoint):
            where = b"\0" + encode_addr(endpoint.addr)
        elif isinstance(getattr(endpoint, "conn", None), FramedConnection):
            conn: FramedConnection = endpoint.conn  # type: ignore[attr-defined]
            where = b"\1" + self.number_of(conn).to_bytes(4, "big") + conn.carrier.encode()
        else:
            return
        now = time.monotonic()
        self._forget_expired_loans(now)
        self.lent.pop(handoff.local_index, None)  # a new loan goes last, in time order
        self.lent[handoff.local_index] = (owner, now)
        self.relay.handoff(owner, where, handoff)
        self.counters["handoffs-out"] += 1

    def may_draw(self, index: int) -> bool:
        """Whether this worker may draw ``index`` for a new handshake (not lent out meanwhile)."""
        lent = self.lent.get(index)
        if lent is None:
            return True
        if time.monotonic() - lent[1] > REJECT_AFTER_TIME:
            del self.lent[index]
            return True
        return False

    def _forget_expired_loans(self, now: float) -> None:
        """Forget indices lent longer than a keypair can live: the oldest loans come first."""
        lent = self.lent
        while lent:
            index, (_, at) = next(iter(lent.items()))
            if now - at <= REJECT_AFTER_TIME:
                return
            del lent[index]

    def announce(self, session_id: int, token: bytes | None, keys: frozenset[bytes]) -> None:
        """A session's resume token or bound keys changed (None and no keys: it ended): tell the
        other workers, so that a handshake for it reaching one of them comes here."""
        token = token or None
        old_token, old_keys = self.announced.pop(session_id, (None, frozenset()))
        if token is not None or keys:
            self.announced[session_id] = (token, keys)
        if old_token != token:
            if old_token is not None:
                self.relay.to_all(RESUME_GONE, old_token)
            if token is not None:
                self.relay.to_all(RESUME_HELD, token)
        for key in old_keys - keys:
            self.relay.to_all(KEY_GONE, key)
        for key in keys - old_keys:
            self.relay.to_all(KEY_HELD, key)

    # ------------------------------------------------------------ connections

    def number_of(self, conn: FramedConnection) -> int:
        number = self._numbers.get(conn)
        if number is None:
            number = self._numbers[conn] = self._next
            self._conns[number] = conn
            self._next = (self._next % 0xFFFFFFFF) + 1
        return number

    def closed(self, conn: FramedConnection) -> None:
        number = self._numbers.pop(conn, None)
        if number is not None:
            self._conns.pop(number, None)

    # ------------------------------------------------------------ what comes in

    def on_readable(self) -> None:
        self.relay.receive(self._handle)
        self.gateway.listeners.flush()
        self.gateway.after_io(self.gateway.clock())

    def _handle(self, kind: int, sender: int, body: bytes) -> None:
        gw = self.gateway
        now = gw.clock()
        if kind == UDP_IN:
            addr, data = decode_addr(body)
            udp = self._udp_endpoint(addr)
            if udp is not None:
                gw.receive_here(data, udp, now)
        elif kind == STREAM_IN:
            number, carrier, data = decode_stream(body)
            gw.receive_here(data, self._stream(sender, number, carrier), now)
        elif kind == STREAM_OUT:
            number, _, data = decode_stream(body)
            conn = self._conns.get(number)
            if conn is not None and not conn.closed:
                conn.send(data)
        elif kind == TUN_IN:
            gw.route(body, now, True)
        elif kind == HANDOFF:
            handoff, where = decode_handoff(body)
            endpoint: Any
            if where[:1] == b"\0":
                endpoint = self._udp_endpoint(decode_addr(where[1:])[0])
            else:
                endpoint = self._stream(sender, int.from_bytes(where[1:5], "big"), where[5:].decode())
            if endpoint is not None:
                self.counters["handoffs-in"] += 1
                gw.core.complete_handoff(handoff, endpoint, now)
        elif kind == RESUME_HELD:
            self.resume_owner[body] = sender
        elif kind == RESUME_GONE:
            if self.resume_owner.get(body) == sender:
                del self.resume_owner[body]
        elif kind == KEY_HELD:
            self.key_owner[body] = sender
        elif kind == KEY_GONE:
            if self.key_owner.get(body) == sender:
                del self.key_owner[body]
        else:
            self.counters["relay-refused"] += 1

    def _udp_endpoint(self, addr: tuple[str, int]) -> UdpEndpoint | None:
        v6 = ":" in addr[0]
        udp: UdpSocket | None = next(
            (u for u in self.gateway.listeners.udp if (u.sock.family.name == "AF_INET6") == v6), None
        )
        return None if udp is None else self.gateway.listeners.udp_endpoint(addr, udp)

    def _stream(self, worker: int, number: int, carrier: str) -> RelayedStream:
        key = (worker, number)
        stream = self._streams.get(key)
        if stream is None:
            if len(self._streams) > 65536:
                self._streams.clear()  # identity only matters for live sessions; they re-create theirs
            stream = self._streams[key] = RelayedStream(self.relay, worker, number, carrier)
        return stream


__all__ = ["RelayedStream", "WorkerLink", "WorkerPlace", "worker_status_socket"]
