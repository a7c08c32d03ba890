"""The client's side of veilgate, sans-IO.

``ClientProtocol`` takes datagrams from the gateway, IP packets from the TUN
and the current time, and returns datagrams to send, packets to deliver, the
next timer and events. It does no I/O and reads no clock. It does not know
about transports either: the driver sends the datagrams on whichever path it
uses (UDP or TCP) and may switch paths at any time; keys and counters do not
depend on the path.

Keypairs: ``current`` sends and receives; ``previous`` only receives, until
it expires; ``next`` holds a rekey's keypair until the gateway confirms it
(an authenticated packet on it), so a rekey loses no packet.

Timers and traffic figures live in ``self.timers`` (``veilgate.protocol.timers.ClientTimers``),
set only by its hooks; ``get_timer`` and ``handle_timer`` here read them.
"""

from __future__ import annotations

import collections
import secrets

from veilgate.protocol import control, ip, messages
from veilgate.protocol.activity import Activity
from veilgate.protocol.constants import (
    HANDSHAKE_RETRY_INITIAL,
    KEEPALIVE_INTERVAL,
    MAX_QUEUED_PACKETS,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    STALL_TIMEOUT,
)
from veilgate.protocol.cookie import CookieGenerator
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.errors import LocalProtocolError, RemoteProtocolError
from veilgate.protocol.events import (
    ConfigReceived,
    ConnectionLost,
    Event,
    HandshakeCompleted,
    HandshakeTimeout,
    PathStalled,
    ProbeAnswered,
)
from veilgate.protocol.handshake import FinalPayload, InitiatorHandshake
from veilgate.protocol.keypair import EXPIRED, USABLE, Keypair, KeypairFactory
from veilgate.protocol.obfs import Obfuscation
from veilgate.protocol.timers import ClientTimers

_INF = float("inf")


class ClientProtocol:
    def __init__(
        self,
        static: KeyPair,
        gateway_public: bytes,
        credential: bytes,
        *,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        stall_timeout: float = STALL_TIMEOUT,
        handshake_retry: float = HANDSHAKE_RETRY_INITIAL,
        rekey_after: float = REKEY_AFTER_TIME,
        new_keypair: KeypairFactory = Keypair,
        obfuscation: bool = False,
    ) -> None:
        if len(gateway_public) != 32:
            raise LocalProtocolError("the gateway's public key is 32 bytes")
        self.static = static
        self.gateway_public = gateway_public
        self.credential = credential
        self.keepalive_interval = keepalive_interval
        self.stall_timeout = stall_timeout
        self.rekey_after = rekey_after
        self.new_keypair = new_keypair
        self.obfs = Obfuscation(gateway_public) if obfuscation else None
        """With obfuscation on (docs/protocol.md 14), every datagram in and out is obfuscated."""
        self.cookies = CookieGenerator(gateway_public)
        self.config: control.TunnelConfig | None = None
        self.counters: collections.Counter[str] = collections.Counter()
        self.timers = ClientTimers(handshake_retry)

        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self._confirmed = False
        self._keypairs: dict[int, Keypair] = {}
        self._handshake: InitiatorHandshake | None = None
        self._final: bytes | None = None
        self._init_sent: bytes | None = None
        self._resume_token: bytes | None = None
        self._rotate = False

        self._started = False
        self._lost_reported = False
        self._queue: collections.deque[bytes] = collections.deque()
        self._out: list[bytes] = []
        self._events: collections.deque[Event] = collections.deque()
        self._probe_ids: set[int] = set()

    # ------------------------------------------------------------ driver API

    @property
    def connected(self) -> bool:
        """A keypair the gateway confirmed is in use."""
        return self.current is not None and self._confirmed

    @property
    def tx_bytes(self) -> int:
        return self.timers.tx_bytes

    @property
    def rx_bytes(self) -> int:
        return self.timers.rx_bytes

    @property
    def authenticated_rx(self) -> int:
        """Datagrams from the gateway that authenticated (responses and transport): a path works."""
        return self.timers.authenticated_rx

    @property
    def last_handshake(self) -> float | None:
        """When the gateway last confirmed a keypair."""
        return self.timers.last_handshake

    def unanswered_for(self, now: float) -> float:
        """How long the client has been sending with nothing authenticated coming back (0 if answered)."""
        since = self.timers.awaiting_since
        return 0.0 if since is None else now - since

    def connect(self, now: float) -> None:
        if self._started:
            raise LocalProtocolError("connect() called twice")
        self._started = True
        self.timers.started(now)
        self._begin_handshake(now)

    def rotate_identity(self, static: KeyPair, credential: bytes, now: float) -> None:
        """Switch to a new static key and credential with a fresh handshake, keeping the session."""
        self.static = static
        self.credential = credential
        self._rotate = True
        self._handshake = None
        self._begin_handshake(now)

    def datagrams_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def handshake_message(self) -> bytes | None:
        """The datagram of the handshake in flight (message 1, or message 3 until confirmed).

        A driver racing a second path sends this on it: a handshake does not
        depend on the path.
        """
        if self._handshake is not None:
            return self._wrap(self._handshake.init_message)
        return None if self._final is None else self._wrap(self._final)

    def is_initiation(self, data: bytes) -> bool:
        """Whether ``data``, from ``datagrams_to_send``, is the message 1 this core sent last."""
        return data is self._init_sent

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def send_packet(self, packet: bytes, now: float) -> bytes | None:
        """Encrypt one IP packet; returns the datagram, or None if it waits for a handshake."""
        kp = self.current
        if kp is None or kp.state(now) is EXPIRED:
            if len(self._queue) < MAX_QUEUED_PACKETS:
                self._queue.append(packet)
            else:
                self.counters["queue-full"] += 1
            if self._handshake is None:
                self._begin_handshake(now)
            return None
        data = kp.seal(packet)
        self.timers.data_sent(now, len(packet))
        if self._handshake is None and kp.state(now) is not USABLE:  # due for a rekey by its counter
            self._begin_handshake(now)
        return data

    def send_probe(self, now: float) -> tuple[int, bytes] | None:
        """An authenticated probe; the gateway answers it on the path it came from, without roaming."""
        kp = self.current
        if kp is None or kp.state(now) is EXPIRED:
            return None
        probe_id = secrets.randbits(64)
        self._probe_ids.add(probe_id)
        if len(self._probe_ids) > 64:
            self._probe_ids.pop()
        return probe_id, kp.seal(control.probe_message(probe_id))

    def send_keepalive(self, now: float) -> bytes | None:
        """An authenticated empty packet, e.g. to move the gateway to a new path at once."""
        kp = self.current
        if kp is None or kp.state(now) is EXPIRED:
            return None
        data = kp.seal(b"")
        self.timers.keepalive_sent(now)
        return data

    def close(self, now: float) -> bytes | None:
        """A CLOSE control message telling the gateway to end the session now."""
        kp = self.current
        if kp is None or kp.state(now) is EXPIRED:
            return None
        return kp.seal(control.close_message())

    def receive_datagram(self, data: bytes, now: float) -> bytes | None:
        """Process one datagram from the gateway; returns an IP packet to deliver, if any."""
        try:
            obfs = self.obfs
            if obfs is not None:
                data = obfs.open(data, self._keypairs)
            msg_type = messages.message_type(data)
            if msg_type == messages.TYPE_TRANSPORT:
                if len(data) < messages.TRANSPORT_MIN_LEN:
                    raise RemoteProtocolError("transport message shorter than its header and tag", "length")
                return self._receive_transport(data, now)
            if msg_type == messages.TYPE_HANDSHAKE_RESP:
                self._receive_response(messages.HandshakeResp.decode(data), now)
            elif msg_type == messages.TYPE_COOKIE_REPLY:
                self._receive_cookie(messages.CookieReply.decode(data), now)
            else:
                raise RemoteProtocolError("message type not for a client", "type")
        except RemoteProtocolError as exc:
            self.counters["drop-" + exc.reason] += 1
        return None

    def _wrap(self, message: bytes) -> bytes:
        return message if self.obfs is None else self.obfs.wrap(message)

    # ------------------------------------------------------------ compiled data path

    def data_path_keypairs(self) -> tuple[Keypair | None, tuple[Keypair, ...]]:
        """The keypair a data path outside the core may seal IP packets with, and those it may open.

        Only a confirmed session qualifies: sending on ``current`` before confirmation, or
        receiving on ``next``, changes the core's state, so those packets come through here. The
        data path still refuses an expired keypair or one due for a rekey by its counter.
        """
        kp = self.current
        if kp is None or not self._confirmed:
            return None, ()
        return kp, (kp,) if self.previous is None else (kp, self.previous)

    def account(self, activity: Activity) -> None:
        """Take note of what a data path outside the core sent and received since the last call.

        Replayed through the timer hooks the Python path calls, in the order it happened: sends
        its last authenticated receive answered (``first_unanswered`` is 0.0), that receive, then
        sends after it, the first of them at ``first_unanswered`` (which starts the stall clock).
        """
        timers = self.timers
        unanswered = activity.first_unanswered
        if activity.tx_packets and not unanswered:
            timers.data_sent(activity.last_tx, activity.tx_bytes)
        if activity.authenticated:
            timers.authenticated_received(activity.last_rx, activity.authenticated)
            timers.data_received(activity.rx_bytes)
        if activity.tx_packets and unanswered:
            timers.data_sent(activity.last_tx, activity.tx_bytes, unanswered)

    def receive_opened(self, plaintext: bytes) -> None:
        """A control message a data path outside the core authenticated, opened and accounted for."""
        try:
            self._receive_control(control.decode_control(plaintext))
        except RemoteProtocolError as exc:
            self.counters["drop-" + exc.reason] += 1

    def get_timer(self) -> float | None:
        if not self._started:
            return None
        timers = self.timers
        t = min(timers.retry_at, timers.final_retry_at)
        kp = self.current
        if kp is not None:
            t = min(t, kp.expires_at)
            if self._handshake is None and self._final is None:
                t = min(t, kp.created + self.rekey_after)
            if self._confirmed:
                t = min(t, timers.last_sent + self.keepalive_interval)
        if self.previous is not None:
            t = min(t, self.previous.expires_at)
        if timers.awaiting_since is not None and not timers.stall_reported:
            t = min(t, timers.awaiting_since + self.stall_timeout)
        if timers.rekey_since is not None:
            t = min(t, timers.rekey_since + self.stall_timeout)
        if timers.attempt_started is not None and not timers.timeout_reported:
            t = min(t, timers.attempt_started + REKEY_ATTEMPT_TIME)
        return None if t == _INF else t

    def handle_timer(self, now: float) -> None:
        if not self._started:
            return
        timers = self.timers
        if self._handshake is not None and now >= timers.retry_at:
            self._begin_handshake(now, retry=True)
        if self._final is not None and now >= timers.final_retry_at:
            self._out.append(self._wrap(self._final))
            timers.final_sent(now)
        if (
            timers.attempt_started is not None
            and not timers.timeout_reported
            and now >= timers.attempt_started + REKEY_ATTEMPT_TIME
        ):
            timers.attempt_timed_out()
            self._events.append(HandshakeTimeout())
        kp = self.current
        if kp is not None:
            if kp.state(now) is EXPIRED:
                self._drop_keypair(kp)
                self.current = None
                self._confirmed = False
                if not self._lost_reported:
                    self._lost_reported = True
                    self._events.append(ConnectionLost())
                if self._handshake is None:
                    self._begin_handshake(now)
            elif now >= kp.created + self.rekey_after and self._handshake is None and self._final is None:
                self._begin_handshake(now)
            elif self._confirmed and now >= timers.last_sent + self.keepalive_interval:
                self._out.append(kp.seal(b""))
                timers.keepalive_sent(now)
        if self.previous is not None and self.previous.state(now) is EXPIRED:
            self._drop_keypair(self.previous)
            self.previous = None
        since = timers.awaiting_since
        if since is not None and not timers.stall_reported and now >= since + self.stall_timeout:
            timers.path_stalled()
            self._events.append(PathStalled(now - since))
            if self._handshake is None:
                self._begin_handshake(now)
        since = timers.rekey_since
        if since is not None and now >= since + self.stall_timeout:
            # Once per rekey: the driver moves the handshake (and the session) to another path.
            timers.rekey_stalled()
            self._events.append(PathStalled(now - since))

    # ------------------------------------------------------------ internals

    def _begin_handshake(self, now: float, retry: bool = False) -> None:
        self._final = None  # a newer handshake supersedes an unconfirmed message 3
        index = self._new_index()
        self._handshake = InitiatorHandshake(self.static, self.gateway_public, index, self.cookies, now)
        self._init_sent = self._wrap(self._handshake.init_message)
        self._out.append(self._init_sent)
        self.timers.handshake_initiated(now, retry=retry, rekey=self.connected)

    def _new_index(self) -> int:
        while True:
            index = secrets.randbits(32)
            if index not in self._keypairs and (
                self._handshake is None or index != self._handshake.local_index
            ):
                return index

    def _receive_cookie(self, reply: messages.CookieReply, now: float) -> None:
        hs = self._handshake
        if hs is None or reply.receiver != hs.local_index:
            raise RemoteProtocolError("cookie reply for no handshake in flight", "unknown-index")
        self.cookies.consume_reply(reply, now)
        self.counters["cookie-replies"] += 1
        self.timers.cookie_received(now)

    def _receive_response(self, resp: messages.HandshakeResp, now: float) -> None:
        hs = self._handshake
        if hs is None or resp.receiver != hs.local_index:
            raise RemoteProtocolError("response for no handshake in flight", "unknown-index")
        hs.read_response(resp)
        resume = self._resume_token if (self._rotate or self.current is not None) else None
        final, result = hs.write_final(FinalPayload(self.credential, resume))
        self._handshake = None
        kp = self.new_keypair(result.send_key, result.recv_key, hs.local_index, hs.remote_index, now, True)
        if self.obfs is not None:
            kp.protect(self.obfs.header_key, result.send_key, result.recv_key)
        self._keypairs[kp.local_index] = kp
        self._resume_token = result.resume_token
        self._rotate = False
        self._final = final
        self._out.append(self._wrap(final))
        self.timers.session_derived(now)
        if self.current is None or self.current.state(now) is EXPIRED:
            # Nothing to keep sending on: use the new keypair at once (data may follow message 3).
            if self.current is not None:
                self._drop_keypair(self.current)
            self.current = kp
            self._confirmed = False
            self._flush_queue(now)
        else:
            if self.next is not None:
                self._drop_keypair(self.next)
            self.next = kp

    def _flush_queue(self, now: float) -> None:
        kp = self.current
        if kp is None:
            return
        while self._queue:
            packet = self._queue.popleft()
            self._out.append(kp.seal(packet))
            self.timers.data_sent(now, len(packet))

    def _drop_keypair(self, kp: Keypair) -> None:
        self._keypairs.pop(kp.local_index, None)

    def _confirm(self, kp: Keypair, now: float) -> None:
        rekey = self.last_handshake is not None
        if kp is self.next:
            if self.previous is not None:
                self._drop_keypair(self.previous)
            self.previous = self.current
            self.current = kp
            self.next = None
        self._confirmed = True
        self._final = None
        self._lost_reported = False
        self.timers.handshake_complete(now)
        self._events.append(HandshakeCompleted(rekey))
        self._flush_queue(now)

    def _receive_transport(self, data: bytes, now: float) -> bytes | None:
        receiver, counter = messages.unpack_transport_header(data)
        kp = self._keypairs.get(receiver)
        if kp is None:
            raise RemoteProtocolError("unknown receiver index", "unknown-index")
        if kp.state(now) is EXPIRED:
            raise RemoteProtocolError("keypair expired", "expired")
        plaintext = kp.open(data, counter)
        self.timers.authenticated_received(now)
        if kp is self.next or (kp is self.current and not self._confirmed):
            self._confirm(kp, now)
        if not plaintext:
            return None  # keepalive
        if plaintext[0] == control.CONTROL_MARKER:
            self._receive_control(control.decode_control(plaintext))
            return None
        length = ip.packet_length(plaintext)
        if length < 0:
            raise RemoteProtocolError("payload is not an IP packet", "not-ip")
        self.timers.data_received(length)
        return plaintext[:length] if length != len(plaintext) else plaintext

    def _receive_control(self, msg: control.ControlMessage) -> None:
        if msg.type == control.CTRL_CONFIG:
            config = control.TunnelConfig.decode_body(msg.body)
            if config != self.config:
                self.config = config
                self._events.append(ConfigReceived(config))
        elif msg.type == control.CTRL_PROBE_REPLY:
            if len(msg.body) == 8:
                probe_id = int.from_bytes(msg.body, "big")
                if probe_id in self._probe_ids:
                    self._probe_ids.discard(probe_id)
                    self._events.append(ProbeAnswered(probe_id))
        else:
            self.counters["control-unknown"] += 1
