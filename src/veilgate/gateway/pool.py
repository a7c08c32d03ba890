"""Tunnel address pools: addresses chosen uniformly at random, leased in memory only.

Nothing here is ever written to disk or logged: when the process ends, the
record of which session held which address is gone.
"""

from __future__ import annotations

import ipaddress
import secrets

from veilgate.gateway.shard import SINGLE, Shard

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def gateway_address(network: IPNetwork) -> IPAddress:
    """The gateway's own tunnel address in a pool: its first host, never handed out."""
    return network.network_address + 1


class PoolExhausted(Exception):  # noqa: N818 - reads as a state, like StopIteration
    pass


class AddressPool:
    """Hands out host addresses of ``network`` uniformly at random among the free ones.

    The gateway's own address (the first host) and, for IPv4, the network and
    broadcast addresses are never handed out. A worker of a many-worker gateway hands out only the
    addresses its ``shard`` owns (``veilgate.gateway.shard``).
    """

    def __init__(
        self, network: IPNetwork, reserved: tuple[IPAddress, ...] = (), shard: Shard = SINGLE
    ) -> None:
        self.network = network
        self.shard = shard
        first = int(network.network_address) + 1
        last = int(network.broadcast_address) - (1 if network.version == 4 else 0)
        if last < first + 1:
            raise ValueError(f"pool {network} is too small")
        self.gateway_address: IPAddress = gateway_address(network)
        self._first = first + 1
        self._last = last
        self._reserved = {int(a) for a in reserved} | {first}
        self._leased: set[int] = set()

    @property
    def in_use(self) -> int:
        return len(self._leased)

    @property
    def size(self) -> int:
        """How many addresses the pool can hand out (this worker's share of them)."""
        owned = self.shard.count_owned(self._first, self._last)
        return owned - sum(1 for r in self._reserved if self._owned(r))

    def _owned(self, value: int) -> bool:
        return self._first <= value <= self._last and self.shard.owns_address(value)

    def _make(self, value: int) -> IPAddress:
        return ipaddress.IPv4Address(value) if self.network.version == 4 else ipaddress.IPv6Address(value)

    def allocate(self) -> IPAddress:
        shard = self.shard
        span = self._last - self._first + 1
        free = self.size - len(self._leased)
        if free <= 0:
            raise PoolExhausted(f"no free address in {self.network}")
        # Rejection sampling is uniform over the free addresses; while the pool is sparse it takes
        # one or two draws. A worker's draw moves down to the nearest address it owns: each owned
        # address stands for the n addresses at and above it, so the draw stays uniform.
        if free * 4 * shard.n >= span:
            while True:
                value = shard.nearest_owned(self._first + secrets.randbelow(span))
                if value >= self._first and value not in self._leased and value not in self._reserved:
                    break
        else:
            # A crowded pool: draw the k-th free address directly.
            k = secrets.randbelow(free)
            value = self._first
            for value in range(self._first, self._last + 1):
                if value in self._leased or value in self._reserved or not shard.owns_address(value):
                    continue
                if k == 0:
                    break
                k -= 1
        self._leased.add(value)
        return self._make(value)

    def release(self, address: IPAddress) -> None:
        self._leased.discard(int(address))

    def is_leased(self, address: IPAddress) -> bool:
        return int(address) in self._leased
