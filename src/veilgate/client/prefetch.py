"""Identities fetched ahead: when a provider-mode client asks the issuer, and what it keeps.

The provider runs both the issuer and the gateways. Blind signatures hide
*what* the issuer signed, but not *when* or *from where* it was asked: a
credential fetched from the client's own address a moment before a session
starts or an identity rotates would link the two. So after bootstrap the
client fetches identities (a fresh static key and a blind credential for it)
ahead of time, at random moments inside a window of each epoch that is kept
clear of the epoch changes (when rotations happen), and through its tunnel, so
the issuer sees only the gateway's egress address. Rotations and failovers
then take an identity from the stash; none of them fetches.

Pure logic (no I/O, the clock is passed in); the supervisor does the fetching.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from veilgate.credentials.epochs import BlindCredential, epoch_of
from veilgate.protocol.crypto import KeyPair

_random = random.SystemRandom()


@dataclass(frozen=True)
class Identity:
    """A static key and its credential, never used for any session yet."""

    key: KeyPair
    credential: BlindCredential

    @property
    def epoch(self) -> int:
        return self.credential.epoch


# What the stash aims to hold during epoch E: one identity of E+1 for the rotation at the start of
# E+1, one usable now (of E, or of E-1 which is valid to the end of E) to fail over with, and a second
# one of E+1, which becomes the failover spare of E+1. In this order of priority.
NEXT_EPOCH_IDENTITIES = 2
SPARE_IDENTITIES = 1


class IdentityStash:
    """Unused identities by epoch, in memory only (a restart bootstraps again)."""

    def __init__(self) -> None:
        self._items: list[Identity] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, identity: Identity) -> None:
        self._items.append(identity)

    def count(self, epoch: int) -> int:
        return sum(1 for i in self._items if i.epoch == epoch)

    def take(self, epochs: Iterable[int]) -> Identity | None:
        """Remove and return an identity of the first of ``epochs`` that the stash holds."""
        for epoch in epochs:
            for n, identity in enumerate(self._items):
                if identity.epoch == epoch:
                    return self._items.pop(n)
        return None

    def take_usable(self, current: int) -> Identity | None:
        """For a new session now: an identity of this epoch, else of the previous one (still valid)."""
        return self.take((current, current - 1))

    def prune(self, current: int) -> None:
        """Forget identities whose credentials no gateway accepts any more."""
        self._items = [i for i in self._items if i.epoch >= current - 1]

    def wanted(self, current: int) -> int | None:
        """The epoch the next prefetch is for, or None when the stash holds enough."""
        if self.count(current + 1) < 1:
            return current + 1
        if self.count(current) + self.count(current - 1) < SPARE_IDENTITIES:
            return current
        if self.count(current + 1) < NEXT_EPOCH_IDENTITIES:
            return current + 1
        return None


def quiet_margin(length: int) -> float:
    """Seconds after the start of each epoch in which rotations happen (after a 1 s pause), and
    the same length kept clear of fetches before the end of each epoch."""
    return min(length / 4, 300.0)


def min_delay(length: int) -> float:
    """The least time between the tunnel coming up (or one fetch) and the next fetch."""
    return min(length / 10, 60.0)


def fetch_window(now: float, length: int, delay: float = 0.0) -> tuple[float, float] | None:
    """Where in the epoch of ``now`` a fetch may still happen, ``delay`` or more from now: after the
    rotations of its start and before the quiet margin of its end; None when that is over."""
    start = epoch_of(now, length) * length
    margin = quiet_margin(length)
    lo, hi = max(now + delay, start + 1.0 + margin), start + length - margin
    return (lo, hi) if lo < hi else None


def fetch_time(now: float, length: int) -> float | None:
    """A uniformly random moment for the next fetch in this epoch's window, at least ``min_delay``
    from now; None when none is left in this epoch (the caller waits for the next one)."""
    window = fetch_window(now, length, min_delay(length))
    if window is None:
        return None
    lo, hi = window
    return _random.uniform(lo, hi)


def rotation_time(epoch: int, length: int) -> float:
    """A random moment early in ``epoch`` (inside the quiet margin), so rotations do not line up
    across clients and no fetch falls near them."""
    return epoch * length + 1.0 + _random.uniform(0.0, quiet_margin(length))
