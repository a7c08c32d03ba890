"""The gateway's side of veilgate, sans-IO: many sessions behind one static key.

``GatewayProtocol.receive_datagram(data, endpoint, now)`` routes each datagram
by its receiver index (transport messages, message 3) or handles it as a new
handshake (message 1). Endpoints are opaque to the core except for the bytes
it binds cookies to (``Endpoint.cookie_bytes``): the driver passes a UDP
address or a TCP connection and gets the same object back with every datagram
to send. The core never raises for bad input from the network: it drops the
datagram and counts the reason in ``counters``.

Between messages 2 and 3 the gateway keeps a bounded, expiring table of
pending handshakes (``veilgate.protocol.pending``). Under load (too many
initiations per second, or the table an eighth full) it answers initiations
without a valid mac2 with a cookie reply, rate-limits the others per source
IP (IPv6 per /64), and always finds them a slot.

A credential is bound to the sessions it opened: at most
``max_sessions_per_credential`` live sessions (default 1) hold a given static
key, and a rotation to a key another live session holds is refused.

Sessions and their credential bindings live in ``veilgate.protocol.session``; their timers, and
the hooks that alone set them, in ``veilgate.protocol.timers``.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import secrets
import struct
from collections.abc import Callable
from typing import Protocol

from veilgate.protocol import control, covers, ip, messages
from veilgate.protocol.activity import Activity
from veilgate.protocol.constants import (
    MAX_PENDING_HANDSHAKES,
    PASSIVE_KEEPALIVE,
    PENDING_HANDSHAKE_TIMEOUT,
    REJECT_AFTER_TIME,
    UNDER_LOAD_INITS_PER_SECOND,
)
from veilgate.protocol.cookie import ZERO_MAC, CookieChecker, RateLimiter, source_prefix
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.errors import CredentialError, LocalProtocolError, RemoteProtocolError
from veilgate.protocol.events import (
    Event,
    Handoff,
    HandshakeElsewhere,
    HandshakeRefused,
    SessionEnded,
    SessionEstablished,
    SessionRekeyed,
)
from veilgate.protocol.handshake import ResponderHandshake
from veilgate.protocol.keypair import EXPIRED, Keypair, KeypairFactory
from veilgate.protocol.obfs import Obfuscation
from veilgate.protocol.pending import PendingHandshakes
from veilgate.protocol.session import CredentialBindings, Endpoint, Session
from veilgate.protocol.timers import GatewayTimers

__all__ = ["CredentialCheck", "Endpoint", "GatewayProtocol", "Session"]

_unpack_transport = messages.unpack_transport_header
_ip_packet_length = ip.packet_length
_ip_source = ip.source
_U32 = struct.Struct("<I")
INIT_MAC2_OFFSET = messages.INIT_MAC2_OFFSET


class CredentialCheck(Protocol):
    """Verifies the credential of message 3 against the static key the handshake authenticated.

    Raises ``CredentialError`` with a reason; ``veilgate.credentials.CredentialVerifier`` is one.
    """

    def verify(self, data: bytes, static_public: bytes, now: float) -> object: ...


class GatewayProtocol:
    def __init__(
        self,
        static: KeyPair,
        credentials: CredentialCheck,
        *,
        under_load_rate: int = UNDER_LOAD_INITS_PER_SECOND,
        max_pending: int = MAX_PENDING_HANDSHAKES,
        passive_keepalive: float = PASSIVE_KEEPALIVE,
        max_sessions_per_credential: int = 1,
        random_index: Callable[[], int] = lambda: secrets.randbits(32),
        new_keypair: KeypairFactory = Keypair,
        obfuscation: bool = False,
    ) -> None:
        self.static = static
        self.public = static.public
        self.credentials = credentials
        self.under_load_rate = under_load_rate
        self.max_pending = max_pending
        self.new_keypair = new_keypair
        self.obfs = Obfuscation(self.public) if obfuscation else None
        self._cover_key = covers.cover_key(self.public)
        """With obfuscation on (docs/protocol.md 14), every datagram in and out is obfuscated."""
        self.force_under_load = False
        self.counters: collections.Counter[str] = collections.Counter()
        self.sessions: dict[int, Session] = {}
        self._random_index = random_index
        self._cookies = CookieChecker(self.public)
        self._ratelimit = RateLimiter()
        self._pending = PendingHandshakes(max_pending)
        self._keypairs: dict[int, Keypair] = {}
        self._bindings = CredentialBindings(max_sessions_per_credential)
        self._by_resume: dict[bytes, Session] = {}
        self._session_ids = itertools.count(1)
        self.timers = GatewayTimers(passive_keepalive)
        # The data path's hooks, bound once (see _receive_transport).
        self._authenticated_received = self.timers.authenticated_received
        self._data_received = self.timers.data_received
        self._out: list[tuple[bytes, Endpoint]] = []
        self._events: collections.deque[Event] = collections.deque()
        self._init_window_start = 0.0
        self._init_count = 0
        self.elsewhere: Callable[[bytes | None, bytes], bool] | None = None
        """In a worker of a many-worker gateway: whether another worker holds the session a resume
        token names, or a session bound to the static key (message 3 then becomes a
        ``HandshakeElsewhere`` event for the driver, and that worker decides)."""
        self.changed: set[Session] | None = None
        """When a driver sets a set here, sessions whose keypairs, endpoint or addresses change (or
        that end) are added to it, for a data path outside the core to follow; the driver empties it."""

    # ------------------------------------------------------------ driver API

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def pending_handshakes(self) -> int:
        return len(self._pending)

    def under_load(self, now: float) -> bool:
        if self.force_under_load or len(self._pending) >= self._pending.load_threshold:
            return True
        if now - self._init_window_start >= 1.0:
            return False
        return self._init_count > self.under_load_rate

    def assign(self, session_id: int, config: control.TunnelConfig, now: float) -> None:
        """Give a session its tunnel configuration; it is pushed to the client at once and after each rekey.

        Only packets whose source address is one of the assigned addresses are accepted from the client.
        """
        session = self.sessions.get(session_id)
        if session is None:
            raise LocalProtocolError(f"no session {session_id}")
        session.config = config
        allowed = set()
        if config.ipv4 is not None:
            allowed.add(config.ipv4.ip.packed)
        if config.ipv6 is not None:
            allowed.add(config.ipv6.ip.packed)
        session.allowed_sources = frozenset(allowed)
        self._changed(session)
        self._send_control(session, control.config_message(config), now)

    def send_packet(self, session: Session, packet: bytes, now: float) -> tuple[bytes, Endpoint] | None:
        """Encrypt an IP packet for a session; returns (datagram, endpoint) or None if it cannot be sent."""
        kp = session.current
        if kp is None or kp.state(now) is EXPIRED:
            self.counters["tx-no-keypair"] += 1
            return None
        self.timers.data_sent(session, now, len(packet))
        return kp.seal(packet), session.endpoint

    def end_session(self, session_id: int, reason: str = "closed") -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        for kp in (session.current, session.previous):
            if kp is not None:
                self._keypairs.pop(kp.local_index, None)
        self._bindings.release(session)
        if self._by_resume.get(session.resume_token) is session:
            del self._by_resume[session.resume_token]
        session.current = session.previous = None
        self._changed(session)
        self._events.append(SessionEnded(session_id, reason))

    def holds_index(self, index: int) -> bool:
        """Whether a live keypair or a pending handshake here has this receiver index."""
        return index in self._keypairs or index in self._pending

    def receive_datagram(self, data: bytes, endpoint: Endpoint, now: float) -> bytes | None:
        """Process one datagram; returns a decrypted IP packet to forward, if any.

        Bad input is dropped and counted, never raised.
        """
        try:
            obfs = self.obfs
            if obfs is not None:
                if covers.looks_like_stun(data):  # a flow's cover (docs/protocol.md 14.4): never answered
                    if not covers.is_cover_request(self._cover_key, data):
                        raise RemoteProtocolError("a STUN message not from a client", "cover")
                    self.counters["cover-discarded"] += 1
                    return None
                data = obfs.open(data, self._keypairs)
            if data[:4] == messages.HDR_TRANSPORT and len(data) >= messages.TRANSPORT_MIN_LEN:
                return self._receive_transport(data, endpoint, now)
            msg_type = messages.message_type(data)
            if msg_type == messages.TYPE_HANDSHAKE_INIT:
                self._receive_init(data, endpoint, now)
            elif msg_type == messages.TYPE_HANDSHAKE_FINAL:
                self._receive_final(messages.HandshakeFinal.decode(data), data, endpoint, now)
            elif msg_type == messages.TYPE_TRANSPORT:
                raise RemoteProtocolError("transport message shorter than its header and tag", "length")
            else:
                raise RemoteProtocolError("message type not for a gateway", "type")
        except RemoteProtocolError as exc:
            self.counters["drop-" + exc.reason] += 1
        return None

    def _wrap(self, message: bytes) -> bytes:
        return message if self.obfs is None else self.obfs.wrap(message)

    # ------------------------------------------------------------ compiled data path

    def account(self, session: Session, activity: Activity) -> None:
        """Take note of what a data path outside the core sent to and received from a session.

        Through the same timer hooks the Python path calls per packet, with the counts."""
        timers = self.timers
        if activity.tx_packets:
            timers.data_sent(session, activity.last_tx, activity.tx_bytes, activity.tx_packets)
        if activity.authenticated:
            timers.authenticated_received(session, activity.last_rx)
        if activity.rx_packets:
            timers.data_received(session, activity.rx_bytes, activity.rx_packets)

    def receive_opened(self, index: int, plaintext: bytes, endpoint: Endpoint, now: float) -> None:
        """A control message a data path outside the core authenticated, opened and accounted for."""
        kp = self._keypairs.get(index)
        if kp is None:  # the session ended since
            return
        try:
            self._receive_control(kp.owner, kp, control.decode_control(plaintext), endpoint, now)
        except RemoteProtocolError as exc:
            self.counters["drop-" + exc.reason] += 1

    def _changed(self, session: Session) -> None:
        if self.changed is not None:
            self.changed.add(session)

    def get_timer(self) -> float | None:
        return self.timers.next_deadline()

    def handle_timer(self, now: float) -> None:
        for ref in self.timers.due(now):
            if isinstance(ref, int):
                pending = self._pending.get(ref)
                if pending is not None and now - pending.created >= PENDING_HANDSHAKE_TIMEOUT:
                    self._pending.pop(ref)
                    self.counters["pending-expired"] += 1
            elif ref.id in self.sessions:
                self._session_timer(ref, now)

    # ------------------------------------------------------------ handshakes

    def _receive_init(self, data: bytes, endpoint: Endpoint, now: float) -> None:
        # Cheapest first: under a flood, most of these end in a cookie reply (docs/protocol.md 6).
        if len(data) != messages.INIT_LEN:
            raise RemoteProtocolError(f"message 1 has a bad length {len(data)}", "length")
        if not self._cookies.check_mac1(data):
            raise RemoteProtocolError("bad mac1", "mac1")
        if now - self._init_window_start >= 1.0:
            self._init_window_start = now
            self._init_count = 0
        self._init_count += 1
        source = endpoint.cookie_bytes()
        # A valid mac2 proves the sender receives at its source address (it got our cookie there).
        proven = data[INIT_MAC2_OFFSET:] != ZERO_MAC and self._cookies.check_mac2(data, source, now)
        if self.under_load(now):
            if not proven:
                sender = _U32.unpack_from(data, 4)[0]
                self._out.append((self._wrap(self._cookies.make_reply(data, sender, source, now)), endpoint))
                self.counters["cookie-sent"] += 1
                return
            if not self._ratelimit.allow(source_prefix(source[:-2]), now):
                raise RemoteProtocolError("initiation rate limit", "ratelimit")
        if len(self._pending) >= self.max_pending:
            if not proven:
                raise RemoteProtocolError("pending handshake table full", "pending-full")
            self.counters["pending-evicted"] += 1
        index = self._new_index()
        hs = ResponderHandshake(self.static, messages.HandshakeInit.decode(data), index, now, endpoint)
        self._pending.add(hs, proven)
        self._out.append((self._wrap(hs.write_response()), endpoint))
        self.timers.response_sent(index, now)
        self.counters["handshake-responses"] += 1

    def _new_index(self) -> int:
        while True:
            index = self._random_index()
            if index not in self._pending and index not in self._keypairs:
                return index

    def _receive_final(
        self, final: messages.HandshakeFinal, data: bytes, endpoint: Endpoint, now: float
    ) -> None:
        hs = self._pending.get(final.receiver)
        if hs is None:
            kp = self._keypairs.get(final.receiver)
            if kp is not None and kp.final_digest == _digest(data):
                # Message 3 again: the client has not seen our confirmation yet.
                self._confirm(kp.owner, kp, now)
                return
            raise RemoteProtocolError("message 3 for no pending handshake", "unknown-index")
        payload, result = hs.read_final(final)  # on a copy: a failure leaves the pending handshake
        self._pending.pop(final.receiver)
        key = result.remote_static
        handoff = Handoff(
            payload.resume or b"",
            key,
            result.send_key,
            result.recv_key,
            result.resume_token,
            hs.local_index,
            hs.remote_index,
            _digest(data),
        )
        resumed = self._by_resume.get(payload.resume) if payload.resume is not None else None
        try:
            self.credentials.verify(payload.credential, key, now)
        except CredentialError as exc:
            self._refuse(exc.reason)
            return
        elsewhere = self.elsewhere
        if (
            resumed is None
            and elsewhere is not None
            and not self._bindings.holds(key)
            and elsewhere(payload.resume, key)
        ):
            self._events.append(HandshakeElsewhere(handoff, endpoint))
            return
        self._go_on(handoff, resumed, endpoint, now)

    def complete_handoff(self, handoff: Handoff, endpoint: Endpoint, now: float) -> None:
        """Go on with a session after a handshake another worker read (its ``HandshakeElsewhere``);
        if the session has ended since, the handshake opens a new one, as it would have there."""
        self._go_on(handoff, self._by_resume.get(handoff.resume), endpoint, now)

    def _go_on(self, h: Handoff, resumed: Session | None, endpoint: Endpoint, now: float) -> None:
        """A handshake whose credential was checked: bind it and install its keypair on its session."""
        key = h.static_public
        try:
            session = self._bindings.session_for(key, resumed)
        except CredentialError as exc:
            self._refuse(exc.reason)
            return
        rotated = session is not None and session.static_public != key
        is_new = session is None
        if session is None:
            session = Session(next(self._session_ids), key, endpoint, now)
            self.sessions[session.id] = session
        kp = self.new_keypair(h.send_key, h.recv_key, h.local_index, h.remote_index, now, False)
        if self.obfs is not None:
            kp.protect(self.obfs.header_key, h.send_key, h.recv_key)
        kp.final_digest = h.final_digest
        kp.owner = session
        self._keypairs[kp.local_index] = kp
        if session.previous is not None:
            self._keypairs.pop(session.previous.local_index, None)
        session.previous, session.current = session.current, kp
        session.static_public = key
        self._bindings.bind(key, session)
        self._by_resume.pop(session.resume_token, None)
        session.resume_token = h.next_resume
        self._by_resume[h.next_resume] = session
        session.endpoint = endpoint
        self.timers.session_derived(session, kp, now)
        self._changed(session)
        self.counters["handshakes"] += 1
        if is_new:
            self._events.append(SessionEstablished(session.id))
        else:
            self._events.append(SessionRekeyed(session.id, rotated))
            self._confirm(session, kp, now)

    def _refuse(self, reason: str) -> None:
        self.counters["refused-" + reason] += 1
        self._events.append(HandshakeRefused(reason))

    def _confirm(self, session: Session, kp: Keypair, now: float) -> None:
        """Confirm a keypair to the client: the config if assigned, else a keepalive."""
        payload = control.config_message(session.config) if session.config is not None else b""
        if kp is session.current and kp.state(now) is not EXPIRED:
            self._out.append((kp.seal(payload), session.endpoint))
            self.timers.authenticated_sent(session, now)

    # ------------------------------------------------------------ data

    def _send_control(self, session: Session, payload: bytes, now: float) -> None:
        kp = session.current
        if kp is None or kp.state(now) is EXPIRED:
            return
        self._out.append((kp.seal(payload), session.endpoint))
        self.timers.authenticated_sent(session, now)

    def _receive_transport(self, data: bytes, endpoint: Endpoint, now: float) -> bytes | None:
        # The data path: kept flat, with no calls it can do without (see bench/core.py).
        receiver, counter = _unpack_transport(data)
        kp = self._keypairs.get(receiver)
        if kp is None:
            raise RemoteProtocolError("unknown receiver index", "unknown-index")
        # ``Keypair.state(now) is EXPIRED``, inlined and by age only, as this path always was:
        # with compiled keypairs the call and the send counter it reads cost about 0.4 us a
        # packet (bench/core.py gateway_receive_datagram_us, 3.7 -> 4.1). The send-counter test
        # left out stops this side sealing; it refuses nothing received before 2**64 - 2**13 sends.
        if now - kp.created >= REJECT_AFTER_TIME:
            raise RemoteProtocolError("keypair expired", "expired")
        plaintext = kp.open(data, counter)
        session: Session = kp.owner
        self._authenticated_received(session, now)
        if not plaintext:
            self._roam(session, endpoint)
            return None
        if plaintext[0] == control.CONTROL_MARKER:
            self._receive_control(session, kp, control.decode_control(plaintext), endpoint, now)
            return None
        if endpoint is not session.endpoint and endpoint != session.endpoint:
            self._roam(session, endpoint)
        length = _ip_packet_length(plaintext)
        if length < 0:
            raise RemoteProtocolError("payload is not an IP packet", "not-ip")
        if _ip_source(plaintext) not in session.allowed_sources:
            raise RemoteProtocolError("source address not assigned to this session", "source")
        self._data_received(session, length)
        return plaintext[:length] if length != len(plaintext) else plaintext

    def _roam(self, session: Session, endpoint: Endpoint) -> None:
        if endpoint != session.endpoint:
            session.endpoint = endpoint
            self.counters["roamed"] += 1
            self._changed(session)

    def _receive_control(
        self, session: Session, kp: Keypair, msg: control.ControlMessage, endpoint: Endpoint, now: float
    ) -> None:
        if msg.type == control.CTRL_PROBE:
            # Answer on the path the probe came from, and do not move the session there.
            self._out.append((kp.seal(control.probe_reply_message(msg.body)), endpoint))
            self.timers.authenticated_sent(session, now)
        elif msg.type == control.CTRL_CLOSE:
            self.end_session(session.id, "closed by client")
        else:
            self.counters["control-unknown"] += 1

    # ------------------------------------------------------------ timers

    def _session_timer(self, session: Session, now: float) -> None:
        # A keypair's expiry comes due at its expires_at; ``now - created`` may round to just below
        # REJECT_AFTER_TIME there, and no later entry would come for it.
        kp = session.current
        if kp is None or kp.state(now) is EXPIRED or now >= kp.expires_at:
            self.end_session(session.id, "expired")
            return
        previous = session.previous
        if previous is not None and (previous.state(now) is EXPIRED or now >= previous.expires_at):
            self._keypairs.pop(previous.local_index, None)
            session.previous = None
            self._changed(session)
        if self.timers.passive_keepalive_due(session, now):
            self._out.append((kp.seal(b""), session.endpoint))
            self.timers.authenticated_sent(session, now)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2s(data, digest_size=16).digest()
