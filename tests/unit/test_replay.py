"""The replay window against a plain model: any sequence of counters gives the same verdicts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate.protocol.constants import REJECT_AFTER_MESSAGES
from veilgate.protocol.replay import ReplayWindow


class Model:
    """The definition: accept a counter once, if it is within ``size`` of the highest seen."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.top = -1

    def would_accept(self, c: int) -> bool:
        return not (c >= REJECT_AFTER_MESSAGES or c in self.seen or self.top - c >= self.size)

    def update(self, c: int) -> bool:
        if not self.would_accept(c):
            return False
        self.seen.add(c)
        self.top = max(self.top, c)
        return True


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([64, 128, 8192]),
    st.lists(st.integers(min_value=-300, max_value=300), min_size=1, max_size=300),
)
def test_walks_match_the_model(size: int, steps: list[int]) -> None:
    """Mostly forward, sometimes back (reordering, replays), sometimes far ahead (loss)."""
    window, model = ReplayWindow(size), Model(size)
    c = 0
    for step in steps:
        c = max(0, c + (step * 100 if step > 250 else step))
        assert window.check(c) == model.would_accept(c)
        assert window.update(c) == model.update(c)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([64, 256, 8192]), st.lists(st.integers(min_value=0, max_value=40000), max_size=400))
def test_update_matches_the_model(size: int, counters: list[int]) -> None:
    window, model = ReplayWindow(size), Model(size)
    for c in counters:
        assert window.check(c) == model.would_accept(c)
        assert window.update(c) == model.update(c), (c, window.top)


def test_in_order_then_replay_and_too_old() -> None:
    w = ReplayWindow(8192)
    for c in range(20000):
        assert w.check(c) and w.update(c)
    assert not w.check(19999) and not w.update(19999)
    assert not w.check(20000 - 8193)
    assert w.check(20000)


def test_out_of_order_within_window() -> None:
    w = ReplayWindow(8192)
    assert w.update(10_000)
    for c in range(10_000 - 8191, 10_000):
        assert w.check(c)
        assert w.update(c)
        assert not w.update(c)
    assert not w.update(10_000 - 8192)


def test_limit() -> None:
    w = ReplayWindow()
    assert not w.check(REJECT_AFTER_MESSAGES)
    assert not w.update(REJECT_AFTER_MESSAGES)
    assert w.update(REJECT_AFTER_MESSAGES - 1)
