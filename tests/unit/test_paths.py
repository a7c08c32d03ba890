"""The client's UDP/TCP path selection, sans-IO."""

from __future__ import annotations

from veilgate.client.paths import SWITCHES_KEPT, TCP, UDP, Act, Action, PathManager


def test_udp_answers_first() -> None:
    pm = PathManager()
    assert pm.start(0.0) == []
    pm.response_on(UDP, 0.05)
    assert pm.active == UDP
    assert pm.handle_timer(0.5) == []
    assert pm.get_timer() is None


def test_udp_silent_races_tcp_and_tcp_wins() -> None:
    pm = PathManager(udp_grace=0.3)
    pm.start(0.0)
    assert pm.get_timer() == 0.3
    assert pm.handle_timer(0.3) == [Action(Act.OPEN_STREAM, TCP)]
    assert pm.stream_connected(0.31) == [Action(Act.SEND_HANDSHAKE, TCP)]
    pm.response_on(TCP, 0.33)
    assert pm.active == TCP
    assert pm.switches[-1].new == TCP and abs(pm.switches[-1].took - 0.33) < 1e-9


def test_stall_on_udp_moves_to_tcp_then_back_when_probe_answers() -> None:
    pm = PathManager(reprobe_interval=5.0, tcp_linger=1.0)
    pm.start(0.0)
    pm.response_on(UDP, 0.01)
    assert pm.stalled(10.0, silent_for=3.0) == [Action(Act.OPEN_STREAM, TCP)]
    assert pm.active is None
    assert pm.stream_connected(10.01) == [Action(Act.SEND_HANDSHAKE, TCP)]
    pm.response_on(TCP, 10.02)
    assert pm.active == TCP and pm.switches[-1].why == "udp stalled"
    assert abs(pm.switches[-1].took - 3.02) < 1e-9  # from the last sign of life on UDP
    assert pm.handle_timer(15.02) == [Action(Act.PROBE_UDP, UDP)]
    # No answer: probe again later.
    assert pm.handle_timer(20.02) == [Action(Act.PROBE_UDP, UDP)]
    assert pm.probe_answered(UDP, 20.03) == [Action(Act.SEND_KEEPALIVE, UDP)]
    assert pm.active == UDP
    assert pm.handle_timer(21.03) == [Action(Act.CLOSE_STREAM)]
    assert not pm.stream_open


def test_tcp_closed_while_active_reconnects_with_backoff_and_tries_udp() -> None:
    pm = PathManager()
    pm.start(0.0)
    pm.handle_timer(0.3)
    pm.stream_connected(0.31)
    pm.response_on(TCP, 0.32)
    assert pm.stream_failed(5.0) == [Action(Act.SEND_HANDSHAKE, UDP)]
    assert pm.active is None
    assert pm.handle_timer(5.5) == [Action(Act.OPEN_STREAM, TCP)]
    assert pm.stream_failed(5.6, was_open=False) == [Action(Act.SEND_HANDSHAKE, UDP)]
    assert pm.get_timer() == 5.6 + 1.0


def test_forced_modes() -> None:
    pm = PathManager(mode=TCP)
    assert pm.start(0.0) == [Action(Act.OPEN_STREAM, TCP)]
    pm = PathManager(mode=UDP)
    pm.start(0.0)
    assert pm.get_timer() is None
    pm.response_on(UDP, 0.1)
    assert pm.stalled(5.0) == []
    assert pm.active == UDP


def test_rekey_goes_on_the_active_path() -> None:
    pm = PathManager()
    pm.start(0.0)
    pm.response_on(UDP, 0.1)
    assert pm.handshake_started(120.0) == [Action(Act.SEND_HANDSHAKE, UDP)]


def test_a_flapping_network_keeps_a_bounded_history_and_exact_counts() -> None:
    """Months of a flaky network: status keeps the last changes only, the counts stay exact."""
    pm = PathManager(reprobe_interval=5.0, tcp_linger=1.0)
    pm.start(0.0)
    pm.response_on(UDP, 0.01)
    now = 0.01
    rounds = 3 * SWITCHES_KEPT
    for _ in range(rounds):
        now += 10.0
        pm.stalled(now, silent_for=3.0)
        pm.stream_connected(now + 0.01)
        pm.response_on(TCP, now + 0.02)
        now += 5.02
        assert pm.handle_timer(now) == [Action(Act.PROBE_UDP, UDP)]
        pm.probe_answered(UDP, now + 0.01)
        now += 1.01
        pm.handle_timer(now)
        assert pm.active == UDP
    assert len(pm.switches) == SWITCHES_KEPT
    assert pm.switch_count == 1 + 2 * rounds
    assert (pm.fallbacks, pm.returns) == (rounds, rounds)
    assert pm.switches[-1].new == UDP and pm.switches[-2].new == TCP
