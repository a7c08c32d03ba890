"""The gateway's pending handshakes: those between message 1 and message 3, bounded.

Message 1 costs an attacker nothing but the gateway's public key, which is public, and its
source address is forgeable. So the table knows two kinds of entries:

- **proven**: message 1 carried a valid mac2, i.e. a cookie that only reaches a sender who
  receives at its source address (WireGuard's cookie, whitepaper section 5.4.7);
- **unproven**: anything else.

Unproven entries exist only while the gateway is not under load (it demands cookies from a
fill of ``capacity // UNDER_LOAD_FRACTION`` on), so they never hold more than that share of
the table. A proven entry always gets a slot: when the table is full it takes the place of
the oldest unproven entry, else of the oldest proven one. Proven entries come at the pace the
per-source rate limit allows, so churning the whole table faster than a legitimate client's
round trip takes thousands of addresses that really receive.
"""

from __future__ import annotations

from typing import Final

from veilgate.protocol.handshake import ResponderHandshake

UNDER_LOAD_FRACTION: Final = 8
"""Cookies are demanded once the table is this fraction full (as in WireGuard's receive.c)."""


class PendingHandshakes:
    """Pending handshakes by the gateway's index for them, oldest first within each kind."""

    __slots__ = ("_proven", "_unproven", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("the pending handshake table needs room for one")
        self.capacity = capacity
        self._proven: dict[int, ResponderHandshake] = {}
        self._unproven: dict[int, ResponderHandshake] = {}

    def __len__(self) -> int:
        return len(self._proven) + len(self._unproven)

    def __contains__(self, index: int) -> bool:
        return index in self._proven or index in self._unproven

    @property
    def unproven(self) -> int:
        return len(self._unproven)

    @property
    def load_threshold(self) -> int:
        """The fill from which the gateway demands cookies."""
        return max(1, self.capacity // UNDER_LOAD_FRACTION)

    def get(self, index: int) -> ResponderHandshake | None:
        hs = self._proven.get(index)
        return hs if hs is not None else self._unproven.get(index)

    def pop(self, index: int) -> ResponderHandshake | None:
        hs = self._proven.pop(index, None)
        return hs if hs is not None else self._unproven.pop(index, None)

    def add(self, hs: ResponderHandshake, proven: bool) -> bool:
        """Keep ``hs``; False (and nothing kept) if the table is full and ``hs`` is unproven."""
        if len(self) >= self.capacity:
            if not proven:
                return False
            victims = self._unproven or self._proven
            del victims[next(iter(victims))]
        (self._proven if proven else self._unproven)[hs.local_index] = hs
        return True
