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
"""

from __future__ import annotations

import collections
import secrets

from veilgate.protocol import control, ip, messages
from veilgate.protocol.constants import (
    CONFIRM_RETRY,
    HANDSHAKE_RETRY_INITIAL,
    HANDSHAKE_RETRY_MAX,
    KEEPALIVE_INTERVAL,
    MAX_QUEUED_PACKETS,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
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
from veilgate.protocol.keypair import Keypair, KeypairFactory

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
    ) -> None:
        if len(gateway_public) != 32:
            raise LocalProtocolError("the gateway's public key is 32 bytes")
        self.static = static
        self.gateway_public = gateway_public
        self.credential = credential
        self.keepalive_interval = keepalive_interval
        self.stall_timeout = stall_timeout
        self.handshake_retry = handshake_retry
        self.rekey_after = rekey_after
        self._new_keypair = new_keypair
        self.cookies = CookieGenerator(gateway_public)
        self.config: control.TunnelConfig | None = None
        self.counters: collections.Counter[str] = collections.Counter()
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.authenticated_rx = 0
        """Datagrams from the gateway that authenticated (responses and transport): a path works."""
        self.last_handshake: float | None = None

        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self._confirmed = False
        self._keypairs: dict[int, Keypair] = {}
        self._handshake: InitiatorHandshake | None = None
        self._attempt_started: float | None = None
        self._retry_at = _INF
        self._retry_interval = handshake_retry
        self._final: bytes | None = None
        self._final_retry_at = _INF
        self._resume_token: bytes | None = None
        self._rotate = False

        self._started = False
        self._last_sent = _INF
        self._last_received = -_INF
        self._awaiting_since: float | None = None
        self._stall_reported = False
        self._rekey_since: float | None = None
        """When the rekey in flight began, until its response: unanswered for ``stall_timeout``, the
        path is stalled for handshakes (a flood can drop full-size datagrams while small ones pass)."""
        self._timeout_reported = False
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

    def unanswered_for(self, now: float) -> float:
        """How long the client has been sending with nothing authenticated coming back (0 if answered)."""
        return 0.0 if self._awaiting_since is None else now - self._awaiting_since

    def connect(self, now: float) -> None:
        if self._started:
            raise LocalProtocolError("connect() called twice")
        self._started = True
        self._last_sent = now
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
            return self._handshake.init_message
        return self._final

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def send_packet(self, packet: bytes, now: float) -> bytes | None:
        """Encrypt one IP packet; returns the datagram, or None if it waits for a handshake."""
        kp = self.current
        if kp is None or kp.expired(now):
            if len(self._queue) < MAX_QUEUED_PACKETS:
                self._queue.append(packet)
            else:
                self.counters["queue-full"] += 1
            if self._handshake is None:
                self._begin_handshake(now)
            return None
        data = kp.seal(packet)
        self._sent(now, len(packet))
        if kp.send_counter >= REKEY_AFTER_MESSAGES and self._handshake is None:
            self._begin_handshake(now)
        return data

    def send_probe(self, now: float) -> tuple[int, bytes] | None:
        """An authenticated probe; the gateway answers it on the path it came from, without roaming."""
        kp = self.current
        if kp is None or kp.expired(now):
            return None
        probe_id = secrets.randbits(64)
        self._probe_ids.add(probe_id)
        if len(self._probe_ids) > 64:
            self._probe_ids.pop()
        return probe_id, kp.seal(control.probe_message(probe_id))

    def send_keepalive(self, now: float) -> bytes | None:
        """An authenticated empty packet, e.g. to move the gateway to a new path at once."""
        kp = self.current
        if kp is None or kp.expired(now):
            return None
        data = kp.seal(b"")
        self._sent(now, 0)
        return data

    def close(self, now: float) -> bytes | None:
        """A CLOSE control message telling the gateway to end the session now."""
        kp = self.current
        if kp is None or kp.expired(now):
            return None
        return kp.seal(control.close_message())

    def receive_datagram(self, data: bytes, now: float) -> bytes | None:
        """Process one datagram from the gateway; returns an IP packet to deliver, if any."""
        try:
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

    def account(
        self,
        tx_packets: int,
        tx_bytes: int,
        last_tx: float,
        first_unanswered: float,
        rx_packets: int,
        rx_bytes: int,
        last_rx: float,
    ) -> None:
        """Take note of what a data path outside the core sent and received since the last call.

        ``first_unanswered``: when it first sent after its last authenticated receive (0.0 if it
        received after everything it sent), which starts the stall timer as ``_sent`` would.
        """
        if rx_packets:
            self.authenticated_rx += rx_packets
            self.rx_bytes += rx_bytes
            self._last_received = max(self._last_received, last_rx)
            self._awaiting_since = None
            self._stall_reported = False
        if tx_packets:
            self.tx_bytes += tx_bytes
            self._last_sent = max(self._last_sent, last_tx)
            if first_unanswered and self._awaiting_since is None:
                self._awaiting_since = first_unanswered

    def receive_opened(self, plaintext: bytes) -> None:
        """A control message a data path outside the core authenticated, opened and accounted for."""
        try:
            self._receive_control(control.decode_control(plaintext))
        except RemoteProtocolError as exc:
            self.counters["drop-" + exc.reason] += 1

    def get_timer(self) -> float | None:
        if not self._started:
            return None
        t = min(self._retry_at, self._final_retry_at)
        kp = self.current
        if kp is not None:
            t = min(t, kp.created + REJECT_AFTER_TIME)
            if self._handshake is None and self._final is None:
                t = min(t, kp.created + self.rekey_after)
            if self._confirmed:
                t = min(t, self._last_sent + self.keepalive_interval)
        if self.previous is not None:
            t = min(t, self.previous.created + REJECT_AFTER_TIME)
        if self._awaiting_since is not None and not self._stall_reported:
            t = min(t, self._awaiting_since + self.stall_timeout)
        if self._rekey_since is not None:
            t = min(t, self._rekey_since + self.stall_timeout)
        if self._attempt_started is not None and not self._timeout_reported:
            t = min(t, self._attempt_started + REKEY_ATTEMPT_TIME)
        return None if t == _INF else t

    def handle_timer(self, now: float) -> None:
        if not self._started:
            return
        if self._handshake is not None and now >= self._retry_at:
            self._retry_interval = min(self._retry_interval * 2, HANDSHAKE_RETRY_MAX)
            self._begin_handshake(now, retry=True)
        if self._final is not None and now >= self._final_retry_at:
            self._out.append(self._final)
            self._final_retry_at = now + CONFIRM_RETRY
        if (
            self._attempt_started is not None
            and not self._timeout_reported
            and now >= self._attempt_started + REKEY_ATTEMPT_TIME
        ):
            self._timeout_reported = True
            self._events.append(HandshakeTimeout())
        kp = self.current
        if kp is not None:
            if kp.expired(now):
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
            elif self._confirmed and now >= self._last_sent + self.keepalive_interval:
                self._out.append(kp.seal(b""))
                self._sent(now, 0)
        if self.previous is not None and self.previous.expired(now):
            self._drop_keypair(self.previous)
            self.previous = None
        if (
            self._awaiting_since is not None
            and not self._stall_reported
            and now >= self._awaiting_since + self.stall_timeout
        ):
            self._stall_reported = True
            self._events.append(PathStalled(now - self._awaiting_since))
            if self._handshake is None:
                self._begin_handshake(now)
        if self._rekey_since is not None and now >= self._rekey_since + self.stall_timeout:
            # Once per rekey: the driver moves the handshake (and the session) to another path.
            self._events.append(PathStalled(now - self._rekey_since))
            self._rekey_since = None

    # ------------------------------------------------------------ internals

    def _sent(self, now: float, nbytes: int) -> None:
        self._last_sent = now
        self.tx_bytes += nbytes
        if self._awaiting_since is None:
            self._awaiting_since = now

    def _begin_handshake(self, now: float, retry: bool = False) -> None:
        if not retry:
            self._retry_interval = self.handshake_retry
            if self._attempt_started is None:
                self._attempt_started = now
            if self.connected:
                self._rekey_since = now
        self._final = None  # a newer handshake supersedes an unconfirmed message 3
        self._final_retry_at = _INF
        index = self._new_index()
        self._handshake = InitiatorHandshake(self.static, self.gateway_public, index, self.cookies, now)
        self._out.append(self._handshake.init_message)
        self._retry_at = now + self._retry_interval

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
        # Resend at once with mac2, but no faster than the retry timer allows.
        self._retry_at = min(self._retry_at, now + 0.05)

    def _receive_response(self, resp: messages.HandshakeResp, now: float) -> None:
        hs = self._handshake
        if hs is None or resp.receiver != hs.local_index:
            raise RemoteProtocolError("response for no handshake in flight", "unknown-index")
        hs.read_response(resp)
        self.authenticated_rx += 1
        self._rekey_since = None
        resume = self._resume_token if (self._rotate or self.current is not None) else None
        final, result = hs.write_final(FinalPayload(self.credential, resume))
        self._handshake = None
        self._retry_at = _INF
        kp = self._new_keypair(result.send_key, result.recv_key, hs.local_index, hs.remote_index, now, True)
        self._keypairs[kp.local_index] = kp
        self._resume_token = result.resume_token
        self._rotate = False
        self._final = final
        self._final_retry_at = now + CONFIRM_RETRY
        self._out.append(final)
        if self.current is None or self.current.expired(now):
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
            self._sent(now, len(packet))

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
        self._final_retry_at = _INF
        self._attempt_started = None
        self._timeout_reported = False
        self._lost_reported = False
        self.last_handshake = now
        self._events.append(HandshakeCompleted(rekey))
        self._flush_queue(now)

    def _receive_transport(self, data: bytes, now: float) -> bytes | None:
        receiver, counter = messages.unpack_transport_header(data)
        kp = self._keypairs.get(receiver)
        if kp is None:
            raise RemoteProtocolError("unknown receiver index", "unknown-index")
        if kp.expired(now):
            raise RemoteProtocolError("keypair expired", "expired")
        plaintext = kp.open(data, counter)
        self.authenticated_rx += 1
        self._last_received = now
        self._awaiting_since = None
        self._stall_reported = False
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
        self.rx_bytes += length
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
