"""Sliding replay window over 64-bit counters (RFC 6479's idea, as a Python int bitmap).

Bit ``i`` of the bitmap stands for counter ``top - i``. A Python int is used as
the bitmap because shifting and masking one big integer is a handful of C
operations, where a list of words would be a Python loop per packet.
"""

from __future__ import annotations

from veilgate.protocol.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW


class ReplayWindow:
    __slots__ = ("_bitmap", "_mask", "size", "top")

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self.size = size
        self._mask = (1 << size) - 1
        self.top = -1
        self._bitmap = 0

    def check(self, counter: int) -> bool:
        """True if ``counter`` is new and inside the window (it may still be forged: update after auth)."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        if counter > self.top:
            return True
        diff = self.top - counter
        return diff < self.size and not (self._bitmap >> diff) & 1

    def update(self, counter: int) -> bool:
        """Mark ``counter`` seen, after its packet authenticated. False if it was a replay."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        top = self.top
        if counter > top:
            shift = counter - top
            self._bitmap = ((self._bitmap << shift) | 1) & self._mask if shift < self.size else 1
            self.top = counter
            return True
        diff = top - counter
        if diff >= self.size:
            return False
        bit = 1 << diff
        if self._bitmap & bit:
            return False
        self._bitmap |= bit
        return True
