"""Sliding replay window over 64-bit counters (RFC 6479's ring of bits).

A ``bytearray`` ring of ``size`` bits: the bit for counter ``c`` lives at
position ``c mod size``. Moving the window forward clears the bits of the
counters skipped over, so a check and an in-order update cost a few
operations whatever the window size (a big-integer bitmap would shift a
kilobyte on every packet).
"""

from __future__ import annotations

from veilgate.protocol.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW


class ReplayWindow:
    __slots__ = ("_bits", "_mask", "size", "top")

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        if size < 64 or size & (size - 1):
            raise ValueError("the replay window is a power of two of at least 64 bits")
        self.size = size
        self._mask = size - 1
        self._bits = bytearray(size // 8)
        self.top = -1

    def check(self, counter: int) -> bool:
        """True if ``counter`` is new and inside the window (it may still be forged: update after auth)."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        top = self.top
        if counter > top:
            return True
        if top - counter >= self.size:
            return False
        i = counter & self._mask
        return not (self._bits[i >> 3] >> (i & 7)) & 1

    def update(self, counter: int) -> bool:
        """Mark ``counter`` seen, after its packet authenticated. False if it was a replay."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        top = self.top
        bits = self._bits
        i = counter & self._mask
        bit = 1 << (i & 7)
        if counter > top:
            gap = counter - top - 1
            if gap:
                if gap >= self.size:
                    bits[:] = bytes(len(bits))
                else:
                    self._clear(top + 1, counter - 1)
            bits[i >> 3] |= bit
            self.top = counter
            return True
        if top - counter >= self.size or bits[i >> 3] & bit:
            return False
        bits[i >> 3] |= bit
        return True

    def _clear(self, first: int, last: int) -> None:
        """Clear the bits of counters ``first..last`` (fewer than ``size`` of them)."""
        bits, mask = self._bits, self._mask
        c = first
        while c <= last and c & 7:
            i = c & mask
            bits[i >> 3] &= ~(1 << (i & 7)) & 0xFF
            c += 1
        while last - c + 1 >= 8:
            start = (c & mask) >> 3
            n = min((last - c + 1) >> 3, len(bits) - start)
            bits[start : start + n] = bytes(n)
            c += n << 3
        while c <= last:
            i = c & mask
            bits[i >> 3] &= ~(1 << (i & 7)) & 0xFF
            c += 1
