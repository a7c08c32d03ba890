"""Which worker of a many-worker gateway owns what: the one rule every layer follows.

A gateway with ``n`` workers (docs/scaling.md) gives worker ``k``:

- the sessions whose receiver indices satisfy ``index % n == k`` (the worker draws them so), and
- the tunnel addresses whose low 32 bits satisfy ``low32 % n == k`` (its pools draw only those).

The kernel steers by the same rule (``veilgate.tun.steering``): a UDP datagram by the receiver
index in its header, a packet to the TUN device by its destination address. Anything that still
reaches the wrong worker (an obfuscated header, a stream connection another worker accepted, a
session handed over after a rekey) is passed to the owner over the workers' relay.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from veilgate.tun.steering import worker_of_address, worker_of_index

LOW32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Shard:
    """Worker ``k`` of ``n``."""

    k: int = 0
    n: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.k < self.n:
            raise ValueError(f"worker {self.k} of {self.n}")

    def owner_of_index(self, index: int) -> int:
        return worker_of_index(index, self.n)

    def owner_of_address(self, value: int) -> int:
        """The worker owning an address (given as an integer, IPv4 or IPv6)."""
        return worker_of_address(value, self.n)

    def owns_address(self, value: int) -> bool:
        return worker_of_address(value, self.n) == self.k

    def random_index(self) -> int:
        """A uniformly random 32-bit receiver index this worker owns."""
        n, k = self.n, self.k
        return secrets.randbelow((LOW32 - k) // n + 1) * n + k

    def nearest_owned(self, value: int) -> int:
        """The address this worker owns at or just below ``value`` (same 2**32 block), or -1."""
        low = value & LOW32
        owned = low - ((low - self.k) % self.n)
        return -1 if owned < 0 else (value & ~LOW32) | owned

    def count_owned(self, first: int, last: int) -> int:
        """How many of the addresses ``first..last`` this worker owns (exactly, in O(1))."""
        if last < first:
            return 0
        if self.n == 1:
            return last - first + 1
        k, n = self.k, self.n
        block_first, block_last = first >> 32, last >> 32
        if block_first == block_last:
            return _count_residue(first & LOW32, last & LOW32, k, n)
        head = _count_residue(first & LOW32, LOW32, k, n)
        tail = _count_residue(0, last & LOW32, k, n)
        middle = (block_last - block_first - 1) * _count_residue(0, LOW32, k, n)
        return head + middle + tail


def _count_residue(a: int, b: int, k: int, n: int) -> int:
    """How many x in a..b have x % n == k."""
    return (b - k) // n - (a - 1 - k) // n if b >= a else 0


SINGLE = Shard()

__all__ = ["SINGLE", "Shard"]
