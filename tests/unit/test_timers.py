"""The timer hooks (veilgate.protocol.timers): what each does to the timer state and to get_timer(),
and that ``account()`` leaves a core in the state the Python data path leaves its twin in.

The twins are two client-gateway pairs connected on the same virtual timeline. One handles real
packets through the Python path; the other hears of the same packets only as ``Activity`` counts,
built the way the compiled data path counts them, in takes of any size.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from veilgate.protocol.activity import ActivityRecord
from veilgate.protocol.client import ClientProtocol
from veilgate.protocol.constants import (
    CONFIRM_RETRY,
    HANDSHAKE_RETRY_MAX,
    PASSIVE_KEEPALIVE,
    PENDING_HANDSHAKE_TIMEOUT,
    REKEY_ATTEMPT_TIME,
)
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.events import Event
from veilgate.protocol.gateway import GatewayProtocol, Session
from veilgate.protocol.keypair import Keypair
from veilgate.protocol.timers import COOKIE_RESEND_DELAY, ClientTimers, GatewayTimers

from .harness import Addr, Net, ipv4_packet

INF = float("inf")


def connected() -> Net:
    net = Net()
    net.connect()
    assert net.client.connected
    return net


def session_of(net: Net) -> Session:
    return next(iter(net.gateway.sessions.values()))


def client_state(client: ClientProtocol) -> dict[str, Any]:
    state = {name: getattr(client.timers, name) for name in ClientTimers.__slots__}
    state["get_timer"] = client.get_timer()
    return state


SESSION_TIMER_FIELDS = (
    "last_handshake",
    "last_received",
    "last_sent",
    "ack_due",
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
)


def gateway_state(gateway: GatewayProtocol, session: Session) -> dict[str, Any]:
    state = {name: getattr(session, name) for name in SESSION_TIMER_FIELDS}
    state["get_timer"] = gateway.get_timer()
    return state


SRC = Path(__file__).parents[2] / "src" / "veilgate"


def timer_field_writes(root: Path) -> list[str]:
    """Assignments to a timer field (``x.<field> = ...``, ``x.<field> += ...``) outside timers.py."""
    fields = set(ClientTimers.__slots__) | set(SESSION_TIMER_FIELDS)
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "protocol" / "timers.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Attribute) and sub.attr in fields:
                        found.append(f"{path.relative_to(root)}:{sub.lineno} .{sub.attr}")
    return found


def test_only_the_hooks_write_the_timer_fields(tmp_path: Path) -> None:
    assert timer_field_writes(SRC) == []
    (tmp_path / "protocol").mkdir()
    (tmp_path / "protocol" / "gateway.py").write_text("def f(s):\n    s.last_sent = 1\n    s.rx_bytes += 2\n")
    assert len(timer_field_writes(tmp_path)) == 2


# ---------------------------------------------------------------------- the client's hooks


def test_client_started_starts_the_keepalive_clock() -> None:
    timers = ClientTimers(1.0)
    assert timers.last_sent == INF
    timers.started(5.0)
    assert timers.last_sent == 5.0


def test_client_data_sent_counts_and_starts_the_stall_clock_once() -> None:
    net = connected()
    client, now = net.client, net.now
    timers = client.timers
    assert client.unanswered_for(now) == 0.0 and not timers.stall_reported
    before, tx = client.get_timer(), client.tx_bytes
    assert before is not None
    timers.data_sent(now + 0.1, 100)
    assert (client.tx_bytes, timers.last_sent, timers.awaiting_since) == (tx + 100, now + 0.1, now + 0.1)
    assert client.get_timer() == min(before, now + 0.1 + client.stall_timeout)
    assert client.unanswered_for(now + 1.1) == pytest.approx(1.0)
    timers.data_sent(now + 0.5, 7)
    assert (client.tx_bytes, timers.last_sent, timers.awaiting_since) == (tx + 107, now + 0.5, now + 0.1)
    timers.data_sent(now + 0.2, 0)  # an earlier time (reported late): the later one stays
    assert timers.last_sent == now + 0.5


def test_client_data_sent_reported_by_a_data_path_starts_the_stall_clock_at_its_first_send() -> None:
    timers = ClientTimers(1.0)
    timers.started(0.0)
    timers.data_sent(9.0, 30, 4.0)
    assert (timers.tx_bytes, timers.last_sent, timers.awaiting_since) == (30, 9.0, 4.0)
    timers.data_sent(12.0, 30, 11.0)  # already waiting since 4.0
    assert (timers.tx_bytes, timers.last_sent, timers.awaiting_since) == (60, 12.0, 4.0)


def test_client_keepalive_sent_moves_the_keepalive_deadline() -> None:
    net = connected()
    client, now = net.client, net.now
    timers = client.timers
    timers.authenticated_received(now)  # nothing unanswered: the keepalive deadline is the next
    tx = client.tx_bytes
    timers.keepalive_sent(now + 2.0)
    assert (timers.last_sent, timers.awaiting_since, client.tx_bytes) == (now + 2.0, now + 2.0, tx)
    assert client.get_timer() == now + 2.0 + client.stall_timeout
    timers.authenticated_received(now + 2.1)
    assert client.get_timer() == now + 2.0 + client.keepalive_interval


def test_client_authenticated_received_stops_the_stall_clock() -> None:
    net = connected()
    client, now = net.client, net.now
    timers = client.timers
    timers.data_sent(now, 10)
    timers.path_stalled()
    rx = client.authenticated_rx
    timers.authenticated_received(now + 1.0, 3)
    assert client.authenticated_rx == rx + 3
    assert (timers.last_received, timers.awaiting_since, timers.stall_reported) == (now + 1.0, None, False)
    assert client.unanswered_for(now + 5) == 0.0
    assert client.get_timer() == min(
        client.current.expires_at,  # type: ignore[union-attr]
        client.current.created + client.rekey_after,  # type: ignore[union-attr]
        timers.last_sent + client.keepalive_interval,
    )
    timers.authenticated_received(now + 0.5)  # an earlier time: the later one stays
    assert timers.last_received == now + 1.0


def test_client_data_received_counts_bytes_only() -> None:
    timers = ClientTimers(1.0)
    timers.data_received(1234)
    assert (timers.rx_bytes, timers.authenticated_rx, timers.last_received) == (1234, 0, -INF)


def test_client_path_stalled_and_rekey_stalled_are_reported_once() -> None:
    net = connected()
    client, now = net.client, net.now
    timers = client.timers
    timers.data_sent(now, 10)
    assert client.get_timer() == now + client.stall_timeout
    timers.path_stalled()
    assert timers.stall_reported
    assert client.get_timer() == now + client.keepalive_interval
    timers.handshake_retry = 2 * client.stall_timeout  # so that the retry comes after the stall
    timers.handshake_initiated(now, retry=False, rekey=True)
    assert timers.rekey_since == now
    assert client.get_timer() == now + client.stall_timeout
    timers.rekey_stalled()
    assert timers.rekey_since is None
    assert client.get_timer() == now + 2 * client.stall_timeout


def test_client_handshake_initiated_retries_back_off_and_attempts_start_once() -> None:
    timers = ClientTimers(1.0)
    timers.final_sent(0.5)
    timers.handshake_initiated(10.0, retry=False, rekey=False)
    assert (timers.retry_at, timers.attempt_started, timers.rekey_since) == (11.0, 10.0, None)
    assert timers.final_retry_at == INF  # a newer handshake supersedes message 3
    intervals = []
    for t in range(11, 17):
        timers.handshake_initiated(float(t), retry=True, rekey=False)
        intervals.append(timers.retry_at - t)
    assert intervals == [2.0, 4.0, 8.0, HANDSHAKE_RETRY_MAX, HANDSHAKE_RETRY_MAX, HANDSHAKE_RETRY_MAX]
    timers.handshake_initiated(30.0, retry=False, rekey=True)
    assert (timers.retry_at, timers.attempt_started, timers.rekey_since) == (31.0, 10.0, 30.0)


def test_client_handshake_timers_drive_get_timer() -> None:
    net = Net()
    client = net.client
    assert client.get_timer() is None  # not started
    client.connect(100.0)
    timers = client.timers
    assert client.get_timer() == timers.retry_at == 100.0 + 1.0
    timers.cookie_received(100.2)
    assert timers.retry_at == 100.2 + COOKIE_RESEND_DELAY == client.get_timer()
    timers.cookie_received(100.96)  # no later than the retry already due
    assert timers.retry_at == 100.2 + COOKIE_RESEND_DELAY
    timers.attempt_timed_out()
    assert timers.timeout_reported


def test_client_session_derived_and_handshake_complete() -> None:
    timers = ClientTimers(1.0)
    timers.handshake_initiated(10.0, retry=False, rekey=True)
    timers.session_derived(10.5)
    assert timers.authenticated_rx == 1
    assert (timers.retry_at, timers.final_retry_at, timers.rekey_since) == (INF, 10.5 + CONFIRM_RETRY, None)
    assert timers.awaiting_since is None and timers.last_received == -INF  # not an answer to data
    timers.final_sent(11.5)
    assert timers.final_retry_at == 11.5 + CONFIRM_RETRY
    timers.attempt_timed_out()
    timers.handshake_complete(11.7)
    assert (timers.final_retry_at, timers.attempt_started, timers.timeout_reported) == (INF, None, False)
    assert timers.last_handshake == 11.7


def test_client_attempt_deadline_is_in_get_timer_until_reported() -> None:
    net = Net()
    client = net.client
    client.connect(0.0)
    timers = client.timers
    for _ in range(4):  # the retries back off to HANDSHAKE_RETRY_MAX
        timers.handshake_initiated(REKEY_ATTEMPT_TIME - 1, retry=True, rekey=False)
    assert timers.attempt_started == 0.0
    assert timers.retry_at == REKEY_ATTEMPT_TIME - 1 + HANDSHAKE_RETRY_MAX
    assert client.get_timer() == REKEY_ATTEMPT_TIME
    timers.attempt_timed_out()
    assert client.get_timer() == timers.retry_at


# ---------------------------------------------------------------------- the gateway's hooks


def bare_session(created: float = 0.0) -> Session:
    return Session(1, b"k" * 32, Addr("192.0.2.1", 1), created)


def test_gateway_response_sent_schedules_the_pending_expiry() -> None:
    timers = GatewayTimers()
    timers.response_sent(7, 3.0)
    assert timers.next_deadline() == 3.0 + PENDING_HANDSHAKE_TIMEOUT
    assert list(timers.due(3.0)) == []
    assert list(timers.due(3.0 + PENDING_HANDSHAKE_TIMEOUT)) == [7]
    assert timers.next_deadline() is None


def test_gateway_session_derived_schedules_the_keypair_expiry() -> None:
    timers, session = GatewayTimers(), bare_session()
    kp = Keypair(bytes(32), bytes(32), 1, 2, 50.0, False)
    timers.session_derived(session, kp, 50.0)
    assert session.last_handshake == 50.0
    assert kp.expires_at == timers.next_deadline()
    assert list(timers.due(kp.expires_at)) == [session]
    assert timers.next_deadline() is None


def test_gateway_data_sent_and_authenticated_sent() -> None:
    timers, session = GatewayTimers(), bare_session()
    timers.data_sent(session, 4.0, 100)
    timers.data_sent(session, 5.0, 300, 2)
    assert (session.tx_bytes, session.tx_packets, session.last_sent) == (400, 3, 5.0)
    timers.authenticated_sent(session, 6.0)
    assert (session.tx_bytes, session.tx_packets, session.last_sent) == (400, 3, 6.0)
    timers.authenticated_sent(session, 5.5)
    timers.data_sent(session, 5.5, 0, 0)
    assert session.last_sent == 6.0  # times only move forward
    assert timers.next_deadline() is None  # sending arms nothing


def test_gateway_authenticated_received_arms_the_passive_keepalive_once() -> None:
    timers, session = GatewayTimers(passive_keepalive=2.0), bare_session()
    timers.authenticated_received(session, 10.0)
    assert (session.last_received, session.ack_due, len(timers)) == (10.0, 12.0, 1)
    assert timers.next_deadline() == 12.0
    timers.authenticated_received(session, 11.0)
    assert (session.last_received, session.ack_due, len(timers)) == (11.0, 12.0, 1)
    timers.authenticated_received(session, 10.5)
    assert session.last_received == 11.0
    assert list(timers.due(11.9)) == []
    assert [s is session for s in timers.due(12.0)] == [True]
    assert timers.next_deadline() is None


def test_gateway_data_received_counts_only() -> None:
    timers, session = GatewayTimers(), bare_session()
    timers.data_received(session, 60)
    timers.data_received(session, 140, 3)
    assert (session.rx_bytes, session.rx_packets, session.last_received, session.ack_due) == (
        200,
        4,
        0.0,
        None,
    )


def test_gateway_passive_keepalive_due_only_after_an_unanswered_receive() -> None:
    timers, session = GatewayTimers(PASSIVE_KEEPALIVE), bare_session()
    timers.authenticated_received(session, 10.0)
    assert not timers.passive_keepalive_due(session, 10.5)  # not yet
    assert session.ack_due == 10.0 + PASSIVE_KEEPALIVE
    assert timers.passive_keepalive_due(session, 11.0)
    assert session.ack_due is None
    timers.authenticated_received(session, 12.0)
    timers.data_sent(session, 12.5, 10)  # answered by data
    assert not timers.passive_keepalive_due(session, 13.0)
    assert session.ack_due is None


def test_gateway_keepalive_and_expiry_each_come_due() -> None:
    timers, session = GatewayTimers(), bare_session()
    kp = Keypair(bytes(32), bytes(32), 1, 2, 0.0, False)
    timers.session_derived(session, kp, 0.0)
    timers.authenticated_received(session, 5.0)
    assert timers.next_deadline() == 5.0 + PASSIVE_KEEPALIVE
    assert list(timers.due(5.0 + PASSIVE_KEEPALIVE)) == [session]
    assert timers.passive_keepalive_due(session, 5.0 + PASSIVE_KEEPALIVE)
    assert timers.next_deadline() == kp.expires_at
    assert list(timers.due(kp.expires_at)) == [session]
    assert timers.next_deadline() is None


def test_gateway_a_later_deadline_does_not_replace_an_earlier_one() -> None:
    timers, session = GatewayTimers(passive_keepalive=1.0), bare_session()
    timers.authenticated_received(session, 10.0)
    kp = Keypair(bytes(32), bytes(32), 1, 2, 10.5, False)
    timers.session_derived(session, kp, 10.5)  # a rekey while the keepalive is due
    assert timers.next_deadline() == 11.0
    assert [s is session for s in timers.due(11.0)] == [True]
    assert timers.next_deadline() == kp.expires_at


def test_gateway_due_comes_in_deadline_order_across_kinds() -> None:
    timers, a, b = GatewayTimers(passive_keepalive=1.0), bare_session(), bare_session()
    timers.session_derived(a, Keypair(bytes(32), bytes(32), 1, 2, -179.0, False), -179.0)  # expires at 1.0
    timers.response_sent(7, 2.5 - PENDING_HANDSHAKE_TIMEOUT)  # expires at 2.5
    timers.authenticated_received(b, 0.5)  # keepalive at 1.5
    assert timers.next_deadline() == 1.0
    assert list(timers.due(3.0)) == [a, b, 7]
    assert timers.next_deadline() is None


def test_gateway_a_deadline_reported_late_waits_behind_the_last_one() -> None:
    """The compiled path reports a receive from before the Python side's latest step: its
    keepalive's deadline is kept, its queue entry waits behind the later one (the queue stays in
    order, so nothing is ever searched)."""
    timers, a, b = GatewayTimers(passive_keepalive=1.0), bare_session(), bare_session()
    timers.authenticated_received(a, 10.0)
    timers.authenticated_received(b, 9.99)
    assert b.ack_due == 10.99
    assert timers.next_deadline() == 11.0
    assert list(timers.due(10.995)) == []
    assert list(timers.due(11.0)) == [a, b]
    assert timers.passive_keepalive_due(b, 11.0)


class CountedTime(float):
    """A time that counts the comparisons made with it (and with the times added up from it)."""

    compared = 0

    def __add__(self, other: object) -> CountedTime:
        return CountedTime(float(self) + float(other))  # type: ignore[arg-type]

    __radd__ = __add__

    def __lt__(self, other: object) -> bool:
        CountedTime.compared += 1
        return float(self) < float(other)  # type: ignore[arg-type]

    def __le__(self, other: object) -> bool:
        CountedTime.compared += 1
        return float(self) <= float(other)  # type: ignore[arg-type]

    def __gt__(self, other: object) -> bool:
        CountedTime.compared += 1
        return float(self) > float(other)  # type: ignore[arg-type]

    def __ge__(self, other: object) -> bool:
        CountedTime.compared += 1
        return float(self) >= float(other)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        CountedTime.compared += 1
        return float(self) == other

    __hash__ = float.__hash__


def keepalive_round_comparisons(sessions: int) -> int:
    """Comparisons of times for one session's passive keepalive, from the receive that arms it to
    the timer that sends it, with ``sessions`` others established (their keepalives sent before)."""
    timers = GatewayTimers(passive_keepalive=1.0)
    for i in range(sessions):
        other, t = bare_session(), CountedTime(i / sessions)
        timers.session_derived(other, Keypair(bytes(32), bytes(32), 1, 2, t, False), t)
        timers.authenticated_received(other, t + 1.0)
    assert len(list(timers.due(CountedTime(3.0)))) == sessions
    session = bare_session()
    CountedTime.compared = 0
    timers.authenticated_received(session, CountedTime(3.5))
    timers.next_deadline()
    assert list(timers.due(CountedTime(4.5))) == [session]
    assert timers.passive_keepalive_due(session, CountedTime(4.5))
    timers.next_deadline()
    return CountedTime.compared


def test_gateway_timers_cost_the_same_however_many_sessions() -> None:
    """Arming, finding and taking a deadline costs the same with 10 sessions as with 10,000: the
    per-packet cost of a gateway must not grow with the sessions it holds (a heap of all their
    deadlines compares a logarithm of their number each time)."""
    assert keepalive_round_comparisons(10_000) == keepalive_round_comparisons(10)


# ---------------------------------------------------------------------- account() and its twin


@dataclass
class Take:
    """What the compiled data path counts between two take() calls (veilgate.fastpath)."""

    tx_packets: int = 0
    tx_bytes: int = 0
    last_tx: float = 0.0
    first_unanswered: float = 0.0
    authenticated: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    last_rx: float = 0.0
    seen: list[str] = field(default_factory=list)

    def sent(self, nbytes: int, now: float) -> None:
        self.tx_packets += 1
        self.tx_bytes += nbytes
        self.last_tx = now
        if self.first_unanswered == 0.0:
            self.first_unanswered = now

    def received(self, nbytes: int, now: float) -> None:
        self.authenticated += 1
        self.last_rx = now
        self.first_unanswered = 0.0
        if nbytes:
            self.rx_packets += 1
            self.rx_bytes += nbytes

    def activity(self, gateway: bool = False) -> ActivityRecord:
        first = 0.0 if gateway else self.first_unanswered  # gateway peers report 0.0
        return ActivityRecord(
            self.tx_packets,
            self.tx_bytes,
            self.last_tx,
            first,
            self.authenticated,
            self.rx_packets,
            self.rx_bytes,
            self.last_rx,
        )

    def busy(self) -> bool:
        return bool(self.tx_packets or self.authenticated)


STEPS = st.lists(
    st.tuples(
        st.sampled_from(["send", "receive", "keepalive-in", "take", "python", "timer"]),
        st.integers(min_value=0, max_value=1300),
        st.floats(min_value=0.0, max_value=4.0),
    ),
    min_size=1,
    max_size=30,
)


def events(client: ClientProtocol) -> list[Event]:
    out = []
    while (event := client.next_event()) is not None:
        out.append(event)
    return out


def twins() -> tuple[Net, Net]:
    a, b = Net(), Net()
    a.connect()
    b.connect()
    assert a.now == b.now and a.client.connected and b.client.connected
    return a, b


# A take with sends before and after a receive, and two unanswered ones: the stall clock starts
# at the first send after the last receive.
MIXED_TAKE = [("send", 10, 0.5), ("receive", 20, 1.0), ("send", 30, 1.0), ("send", 40, 1.0), ("take", 0, 0.0)]


@settings(max_examples=100, deadline=None)
@given(STEPS)
@example(MIXED_TAKE)
def test_client_account_leaves_the_state_the_python_path_leaves(steps: list[tuple[str, int, float]]) -> None:
    a, b = twins()
    assert client_state(a.client) == client_state(b.client)
    session = session_of(a)
    ip = a.client_ip
    now = a.now
    take = Take()

    def flush() -> None:
        nonlocal take
        if take.busy():
            b.client.account(take.activity())
        take = Take()

    for kind, size, dt in steps:
        now += dt
        if kind == "send":  # the client's data path sends an IP packet
            packet = ipv4_packet(ip, "198.51.100.1", bytes(size))
            assert a.client.send_packet(packet, now) is not None
            take.sent(len(packet), now)
        elif kind in ("receive", "keepalive-in"):  # and receives one, or a keepalive
            packet = ipv4_packet("198.51.100.1", ip, bytes(size)) if kind == "receive" else b""
            kp = session.current
            assert kp is not None
            assert a.client.receive_datagram(kp.seal(packet), now) == (packet or None)
            take.received(len(packet), now)
        elif kind == "take":
            flush()
        else:  # Python runs between takes: a keepalive it sends, or its timer
            flush()
            if kind == "python":
                assert a.client.send_keepalive(now) is not None
                assert b.client.send_keepalive(now) is not None
            else:
                a.client.handle_timer(now)
                b.client.handle_timer(now)
                assert len(a.client.datagrams_to_send()) == len(b.client.datagrams_to_send())
                assert events(a.client) == events(b.client)
        if kind in ("take", "python", "timer"):
            assert client_state(a.client) == client_state(b.client), (kind, now)
    flush()
    assert client_state(a.client) == client_state(b.client)


@settings(max_examples=100, deadline=None)
@given(STEPS)
@example(MIXED_TAKE)
def test_gateway_account_leaves_the_state_the_python_path_leaves(steps: list[tuple[str, int, float]]) -> None:
    a, b = twins()
    sa, sb = session_of(a), session_of(b)
    a.gateway.datagrams_to_send()
    b.gateway.datagrams_to_send()
    assert gateway_state(a.gateway, sa) == gateway_state(b.gateway, sb)
    ip = a.client_ip
    now = a.now
    take = Take()

    def flush() -> None:
        nonlocal take
        if take.busy():
            b.gateway.account(sb, take.activity(gateway=True))
        take = Take()

    for kind, size, dt in steps:
        now += dt
        if kind == "send":  # the gateway's data path forwards an IP packet to the client
            packet = ipv4_packet("198.51.100.1", ip, bytes(size))
            assert a.gateway.send_packet(sa, packet, now) is not None
            take.sent(len(packet), now)
        elif kind in ("receive", "keepalive-in"):  # and one from it, or its keepalive
            if take.authenticated and take.last_rx != now:
                # An Activity tells the time of the last receive only: the passive keepalive is
                # armed from it, not from the first receive of the take as per packet.
                flush()
            packet = ipv4_packet(ip, "198.51.100.1", bytes(size)) if kind == "receive" else b""
            kp = a.client.current
            assert kp is not None
            assert a.gateway.receive_datagram(kp.seal(packet), a.addr, now) == (packet or None)
            take.received(len(packet), now)
        elif kind == "take":
            flush()
        else:  # Python runs between takes: here, the gateway's timers
            flush()
            a.gateway.handle_timer(now)
            b.gateway.handle_timer(now)
            assert len(a.gateway.datagrams_to_send()) == len(b.gateway.datagrams_to_send())
        if kind in ("take", "python", "timer"):
            assert gateway_state(a.gateway, sa) == gateway_state(b.gateway, sb), (kind, now)
    flush()
    assert gateway_state(a.gateway, sa) == gateway_state(b.gateway, sb)


def test_account_with_nothing_changes_nothing() -> None:
    net = connected()
    session = session_of(net)
    before_c, before_g = client_state(net.client), gateway_state(net.gateway, session)
    net.client.account(ActivityRecord())
    net.gateway.account(session, ActivityRecord())
    assert client_state(net.client) == before_c
    assert gateway_state(net.gateway, session) == before_g


def test_the_twins_start_alike_whatever_their_keys() -> None:
    a = Net(client_key=KeyPair.generate())
    b = Net(client_key=KeyPair.generate())
    a.connect()
    b.connect()
    assert client_state(a.client) == client_state(b.client)
    assert gateway_state(a.gateway, session_of(a)) == gateway_state(b.gateway, session_of(b))
