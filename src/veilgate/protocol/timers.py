"""The timers of both sides, and the hooks that alone write them.

As in the Linux kernel's WireGuard (drivers/net/wireguard/timers.c), the code that sends and
receives does not set timers itself: it calls a hook named after what happened (``data_sent``,
``authenticated_received``, ``handshake_initiated``, ``session_derived``, ...), and the hook
updates the timer state and the traffic figures. The Python data path calls the hooks packet by
packet; ``account()`` calls the same hooks with the counts a data path outside the core reports
(``veilgate.protocol.activity``). ``get_timer``/``handle_timer`` of ``ClientProtocol`` and
``GatewayProtocol`` only read the state to decide what is due (and call a hook to note what they
did about it).

Times only move forward here: a hook given a time before the one it holds keeps the later one
(a data path outside the core reports times from before the Python side's latest step). The
comparisons are written out, not ``max()``: the hooks run once per packet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, Final

from veilgate.protocol.constants import (
    CONFIRM_RETRY,
    HANDSHAKE_RETRY_MAX,
    PASSIVE_KEEPALIVE,
    PENDING_HANDSHAKE_TIMEOUT,
)
from veilgate.protocol.keypair import Keypair
from veilgate.protocol.session import Session

_INF: Final = float("inf")

COOKIE_RESEND_DELAY: Final = 0.05
"""After a cookie reply, message 1 goes again with mac2 this soon (or sooner, if its retry is due)."""


class ClientTimers:
    """The client's timer state and traffic figures (``ClientProtocol.timers``)."""

    __slots__ = (
        "attempt_started",
        "authenticated_rx",
        "awaiting_since",
        "final_retry_at",
        "handshake_retry",
        "last_handshake",
        "last_received",
        "last_sent",
        "rekey_since",
        "retry_at",
        "retry_interval",
        "rx_bytes",
        "stall_reported",
        "timeout_reported",
        "tx_bytes",
    )

    def __init__(self, handshake_retry: float) -> None:
        self.handshake_retry = handshake_retry
        """A new attempt's first retry interval; each retry doubles it, up to HANDSHAKE_RETRY_MAX."""
        self.retry_interval = handshake_retry
        self.retry_at = _INF
        """When message 1 goes again."""
        self.final_retry_at = _INF
        """When message 3 goes again (until the gateway confirms its keypair)."""
        self.attempt_started: float | None = None
        """When the handshakes since the last completed one began (HandshakeTimeout after
        REKEY_ATTEMPT_TIME, reported once: ``timeout_reported``)."""
        self.timeout_reported = False
        self.rekey_since: float | None = None
        """When the rekey in flight began, until its response: unanswered for ``stall_timeout``, the
        path is stalled for handshakes (a flood can drop full-size datagrams while small ones pass)."""
        self.last_sent = _INF
        """The keepalive clock; ``started`` sets it (no keepalive before ``connect``)."""
        self.last_received = -_INF
        self.awaiting_since: float | None = None
        """When the first send with nothing authenticated received after it went out: the stall
        clock (PathStalled after ``stall_timeout``, reported once: ``stall_reported``)."""
        self.stall_reported = False
        self.last_handshake: float | None = None
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.authenticated_rx = 0
        """Datagrams from the gateway that authenticated (responses and transport): a path works."""

    # ------------------------------------------------------------ handshakes

    def started(self, now: float) -> None:
        """``connect``: the keepalive clock starts."""
        self.last_sent = now

    def handshake_initiated(self, now: float, *, retry: bool, rekey: bool) -> None:
        """Message 1 sent: a new attempt (a rekey of a connected session, or not), or a retry."""
        if retry:
            self.retry_interval = min(self.retry_interval * 2, HANDSHAKE_RETRY_MAX)
        else:
            self.retry_interval = self.handshake_retry
            if self.attempt_started is None:
                self.attempt_started = now
            if rekey:
                self.rekey_since = now
        self.final_retry_at = _INF  # a newer handshake supersedes an unconfirmed message 3
        self.retry_at = now + self.retry_interval

    def cookie_received(self, now: float) -> None:
        """A cookie reply for the handshake in flight: resend at once with mac2, within the retry timer."""
        self.retry_at = min(self.retry_at, now + COOKIE_RESEND_DELAY)

    def session_derived(self, now: float) -> None:
        """Message 2 authenticated, the keypair derived, message 3 sent.

        It counts as a working path, not as an answer to data: the stall clock runs on."""
        self.authenticated_rx += 1
        self.rekey_since = None
        self.retry_at = _INF
        self.final_sent(now)

    def final_sent(self, now: float) -> None:
        """Message 3 sent (again, until the gateway confirms its keypair)."""
        self.final_retry_at = now + CONFIRM_RETRY

    def handshake_complete(self, now: float) -> None:
        """The gateway confirmed a keypair."""
        self.final_retry_at = _INF
        self.attempt_started = None
        self.timeout_reported = False
        self.last_handshake = now

    def attempt_timed_out(self) -> None:
        """HandshakeTimeout reported (once per attempt)."""
        self.timeout_reported = True

    def path_stalled(self) -> None:
        """PathStalled reported for the data sent since ``awaiting_since`` (once per silence)."""
        self.stall_reported = True

    def rekey_stalled(self) -> None:
        """PathStalled reported for the rekey in flight (once per rekey)."""
        self.rekey_since = None

    # ------------------------------------------------------------ data

    def data_sent(self, now: float, nbytes: int, first_unanswered: float | None = None) -> None:
        """IP packets of ``nbytes`` bytes in all (0 for a keepalive) sealed and sent.

        The first send after an authenticated receive starts the stall clock: this one, or the
        one at ``first_unanswered`` that a data path outside the core reports."""
        self.tx_bytes += nbytes
        if now > self.last_sent:  # noqa: PLR1730 (max() costs a call)
            self.last_sent = now
        if self.awaiting_since is None:
            self.awaiting_since = now if first_unanswered is None else first_unanswered

    def keepalive_sent(self, now: float) -> None:
        """An empty authenticated packet sent: as data, without bytes."""
        self.data_sent(now, 0)

    def authenticated_received(self, now: float, count: int = 1) -> None:
        """Transport datagrams from the gateway authenticated (any kind): the path answers."""
        self.authenticated_rx += count
        if now > self.last_received:  # noqa: PLR1730 (max() costs a call)
            self.last_received = now
        self.awaiting_since = None
        self.stall_reported = False

    def data_received(self, nbytes: int) -> None:
        """IP packets of ``nbytes`` bytes in all delivered."""
        self.rx_bytes += nbytes


class GatewayTimers:
    """The gateway's deadlines, and the hooks that alone write a ``Session``'s timer fields
    (``last_sent``, ``last_received``, ``ack_due``, ``last_handshake``) and traffic figures.

    Each kind of deadline is a fixed delay after the moment it is set: a pending handshake expires
    ``PENDING_HANDSHAKE_TIMEOUT`` after its response, a keypair ``REJECT_AFTER_TIME`` after it was
    derived, a passive keepalive is due ``passive_keepalive`` after a receive. So each kind has a
    first-in first-out queue, in deadline order as it is filled: setting a deadline, finding the
    next one and taking one that is due cost the same however many sessions there are (a heap of
    them all would cost a logarithm of their number, for each packet that arms a keepalive). A
    deadline set earlier than the last one in its queue (the compiled data path reports times
    from before the Python side's latest step) waits behind it, by at most that difference.

    An entry is not removed when what it waits for changes (a session ends, a keypair is replaced,
    a keepalive is answered by data): the session's timer, run when it comes due, finds nothing
    to do.
    """

    def __init__(self, passive_keepalive: float = PASSIVE_KEEPALIVE) -> None:
        self.passive_keepalive = passive_keepalive
        self._pending: deque[tuple[float, int]] = deque()
        """Pending handshakes (receiver indices) by expiry."""
        self._expiries: deque[tuple[float, Session]] = deque()
        """Sessions by the expiry of a keypair they derived."""
        self._acks: deque[tuple[float, Session]] = deque()
        """Sessions by their passive keepalive's deadline."""

    def __len__(self) -> int:
        """Entries queued, stale ones included."""
        return len(self._pending) + len(self._expiries) + len(self._acks)

    def next_deadline(self) -> float | None:
        at = _INF
        for queue in (self._pending, self._expiries, self._acks):
            if queue and queue[0][0] < at:
                at = queue[0][0]
        return at if at != _INF else None

    def due(self, now: float) -> Iterator[int | Session]:
        """What is due at ``now``, earliest first: a pending handshake's index, or a session whose
        timer should run (a session may come twice: its timer finds nothing the second time)."""
        queues = (self._pending, self._expiries, self._acks)
        while True:
            first: deque[Any] | None = None
            at = now
            for queue in queues:
                if queue and queue[0][0] <= at:
                    first, at = queue, queue[0][0]
            if first is None:
                return
            yield first.popleft()[1]

    def response_sent(self, index: int, now: float) -> None:
        """Message 2 sent: the pending handshake ``index`` is due to expire."""
        _append(self._pending, now + PENDING_HANDSHAKE_TIMEOUT, index)

    # ------------------------------------------------------------ sessions

    def session_derived(self, session: Session, kp: Keypair, now: float) -> None:
        """Message 3 accepted, ``kp`` the session's new keypair: the session ends when it expires,
        unless a rekey comes first (the previous keypair goes when it expires)."""
        session.last_handshake = now
        _append(self._expiries, kp.expires_at, session)

    def data_sent(self, session: Session, now: float, nbytes: int, packets: int = 1) -> None:
        """IP packets sealed and sent to the session."""
        session.tx_bytes += nbytes
        session.tx_packets += packets
        if now > session.last_sent:  # noqa: PLR1730 (max() costs a call)
            session.last_sent = now

    def authenticated_sent(self, session: Session, now: float) -> None:
        """Anything else sealed and sent to the session: a confirmation, a control message, a keepalive."""
        if now > session.last_sent:  # noqa: PLR1730 (max() costs a call)
            session.last_sent = now

    def authenticated_received(self, session: Session, now: float) -> None:
        """A datagram of the session authenticated (any kind): unless the gateway sends something
        within ``passive_keepalive``, a keepalive answers it."""
        if now > session.last_received:  # noqa: PLR1730 (max() costs a call)
            session.last_received = now
        if session.ack_due is None:
            due = now + self.passive_keepalive
            session.ack_due = due
            _append(self._acks, due, session)

    def data_received(self, session: Session, nbytes: int, packets: int = 1) -> None:
        """IP packets from the session forwarded."""
        session.rx_bytes += nbytes
        session.rx_packets += packets

    def passive_keepalive_due(self, session: Session, now: float) -> bool:
        """At the session's timer: whether to send the passive keepalive (received since it last sent)."""
        if session.ack_due is not None and now >= session.ack_due:
            session.ack_due = None
            return session.last_sent < session.last_received
        return False


def _append(queue: deque[tuple[float, Any]], at: float, ref: Any) -> None:
    """Queue ``ref`` at ``at``, or behind the last entry if that is later (the queue stays in order)."""
    if queue and queue[-1][0] > at:
        at = queue[-1][0]
    queue.append((at, ref))
