"""Events the protocol objects hand to their drivers."""

from __future__ import annotations

from dataclasses import dataclass

from veilgate.protocol.control import TunnelConfig


@dataclass(frozen=True)
class Event:
    pass


# ---- client side


@dataclass(frozen=True)
class HandshakeCompleted(Event):
    """The gateway confirmed a new keypair (first connection or rekey)."""

    rekey: bool


@dataclass(frozen=True)
class ConfigReceived(Event):
    config: TunnelConfig


@dataclass(frozen=True)
class ProbeAnswered(Event):
    probe_id: int


@dataclass(frozen=True)
class PathStalled(Event):
    """Data was sent and nothing authenticated came back for ``stall_timeout`` seconds."""

    silent_for: float


@dataclass(frozen=True)
class HandshakeTimeout(Event):
    """No handshake completed for REKEY_ATTEMPT_TIME; the client keeps trying."""


@dataclass(frozen=True)
class ConnectionLost(Event):
    """The last valid keypair expired: no traffic can flow until a handshake completes."""


# ---- gateway side


@dataclass(frozen=True)
class SessionEstablished(Event):
    """A new session: the driver assigns its addresses with ``GatewayProtocol.assign``."""

    session_id: int


@dataclass(frozen=True)
class SessionRekeyed(Event):
    session_id: int
    identity_rotated: bool


@dataclass(frozen=True)
class SessionEnded(Event):
    session_id: int
    reason: str


@dataclass(frozen=True)
class HandshakeRefused(Event):
    """A handshake failed its credential check; ``reason`` names why, never who."""

    reason: str


@dataclass(frozen=True)
class Handoff:
    """A completed handshake that resumes a session another worker of the gateway holds (or whose
    key is bound there): what that worker needs to go on with it, or to refuse it
    (``GatewayProtocol.complete_handoff``). The credential was checked by the worker that read
    message 3. Secret: it travels only between the workers."""

    resume: bytes
    static_public: bytes
    send_key: bytes
    recv_key: bytes
    next_resume: bytes
    local_index: int
    remote_index: int
    final_digest: bytes


@dataclass(frozen=True)
class HandshakeElsewhere(Event):
    """Message 3 named a session of another worker, or its key is bound there
    (``GatewayProtocol.elsewhere``): the driver passes ``handoff`` to that worker, with the
    endpoint the message came from."""

    handoff: Handoff
    endpoint: object
