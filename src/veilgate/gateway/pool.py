"""Tunnel address pools: addresses chosen uniformly at random, leased in memory only.

Nothing here is ever written to disk or logged: when the process ends, the
record of which session held which address is gone.
"""

from __future__ import annotations

import ipaddress
import secrets

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PoolExhausted(Exception):  # noqa: N818 - reads as a state, like StopIteration
    pass


class AddressPool:
    """Hands out host addresses of ``network`` uniformly at random among the free ones.

    The gateway's own address (the first host) and, for IPv4, the network and
    broadcast addresses are never handed out.
    """

    def __init__(self, network: IPNetwork, reserved: tuple[IPAddress, ...] = ()) -> None:
        self.network = network
        first = int(network.network_address) + 1
        last = int(network.broadcast_address) - (1 if network.version == 4 else 0)
        if last < first + 1:
            raise ValueError(f"pool {network} is too small")
        self.gateway_address: IPAddress = (
            ipaddress.ip_address(first) if network.version == 4 else (ipaddress.IPv6Address(first))
        )
        self._first = first + 1
        self._last = last
        self._reserved = {int(a) for a in reserved} | {first}
        self._leased: set[int] = set()

    @property
    def in_use(self) -> int:
        return len(self._leased)

    @property
    def size(self) -> int:
        """How many addresses the pool can hand out."""
        span = self._last - self._first + 1
        return span - sum(1 for r in self._reserved if self._first <= r <= self._last)

    def _make(self, value: int) -> IPAddress:
        return ipaddress.IPv4Address(value) if self.network.version == 4 else ipaddress.IPv6Address(value)

    def allocate(self) -> IPAddress:
        span = self._last - self._first + 1
        free = self.size - len(self._leased)
        if free <= 0:
            raise PoolExhausted(f"no free address in {self.network}")
        # Rejection sampling is uniform over the free addresses; while the pool is
        # sparse it takes one or two draws.
        if free * 4 >= span:
            while True:
                value = self._first + secrets.randbelow(span)
                if value not in self._leased and value not in self._reserved:
                    break
        else:
            # A crowded pool: draw the k-th free address directly.
            k = secrets.randbelow(free)
            value = self._first
            for value in range(self._first, self._last + 1):
                if value in self._leased or value in self._reserved:
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
