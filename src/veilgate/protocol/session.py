"""A gateway's sessions: one per client, where its datagrams come from, and which credentials hold it.

``GatewayProtocol`` keeps a ``Session`` per client in memory only. Its keypairs, endpoint and
addresses change as the core handles handshakes, roaming and assignments; its timer fields and
traffic figures change only through the hooks of ``veilgate.protocol.timers.GatewayTimers``.
``CredentialBindings`` decides which session a handshake may open or go on with.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Protocol

from veilgate.protocol import control
from veilgate.protocol.constants import MAX_CREDENTIAL_KEYS
from veilgate.protocol.errors import CredentialError, LocalProtocolError
from veilgate.protocol.keypair import Keypair

_INF = float("inf")


class Endpoint(Hashable, Protocol):
    """Where a datagram came from; the driver's own object (a UDP address, a TCP connection)."""

    def cookie_bytes(self) -> bytes:
        """The source address a cookie is bound to (IP address and port)."""
        ...


@dataclass(eq=False)
class Session:
    """One client's session: keypairs, endpoint and counters. Lives in memory only."""

    id: int
    static_public: bytes
    endpoint: Endpoint
    created: float
    current: Keypair | None = None
    previous: Keypair | None = None
    config: control.TunnelConfig | None = None
    allowed_sources: frozenset[bytes] = frozenset()
    resume_token: bytes = b""
    last_handshake: float = 0.0
    last_received: float = 0.0
    last_sent: float = -_INF
    ack_due: float | None = None
    """When a keepalive answers what the session sent, unless the gateway sends something first."""
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    credential_keys: list[bytes] = field(default_factory=list)
    """The static keys (each certified by a credential) this session authenticated with, oldest first."""


class CredentialBindings:
    """A credential is bound to the sessions it opened.

    At most ``limit`` live sessions hold a given static key (and so its credential); a rotation to
    a key another live session holds is refused; a session stays bound to the keys of its latest
    MAX_CREDENTIAL_KEYS handshakes (its ``credential_keys``).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise LocalProtocolError("max_sessions_per_credential must be at least 1")
        self.limit = limit
        self._holders: dict[bytes, list[Session]] = {}
        """Static key -> the live sessions that authenticated with it."""

    def session_for(self, key: bytes, resumed: Session | None) -> Session | None:
        """The session a handshake that authenticated ``key`` goes on with (``resumed``, the live
        session its resume token names, if any), or None for a new one.

        Raises ``CredentialError`` (reason ``credential-in-use``) when the key may open none.
        """
        holders = self._holders.get(key, [])
        if resumed is not None:
            # A rekey or a rotation of a live session: the key may hold no other live session.
            if any(other is not resumed for other in holders):
                raise CredentialError("the key holds another live session", "credential-in-use")
            return resumed
        if len(holders) < self.limit:
            return None
        # At the limit: only the session that uses this key now may go on (a client that lost
        # its state reconnects); a key rotated away from opens nothing new.
        session = next((other for other in holders if other.static_public == key), None)
        if session is None:
            raise CredentialError("the key holds as many live sessions as it may", "credential-in-use")
        return session

    def bind(self, key: bytes, session: Session) -> None:
        """``session`` authenticated with ``key``."""
        keys = session.credential_keys
        if key in keys:
            return
        keys.append(key)
        self._holders.setdefault(key, []).append(session)
        if len(keys) > MAX_CREDENTIAL_KEYS:
            self._unbind(keys.pop(0), session)

    def holds(self, key: bytes) -> bool:
        """Whether a live session here is bound to ``key``."""
        return key in self._holders

    def release(self, session: Session) -> None:
        """``session`` ended: its keys may open sessions again."""
        for key in session.credential_keys:
            self._unbind(key, session)

    def _unbind(self, key: bytes, session: Session) -> None:
        holders = self._holders.get(key)
        if holders is not None and session in holders:
            holders.remove(session)
            if not holders:
                del self._holders[key]
