"""Address pools: uniform random choice, no reuse while leased, release, exhaustion."""

from __future__ import annotations

import collections
import ipaddress

import pytest

from veilgate.gateway.pool import AddressPool, PoolExhausted


def test_never_hands_out_network_gateway_or_broadcast() -> None:
    pool = AddressPool(ipaddress.ip_network("10.9.0.0/29"))
    got = {pool.allocate() for _ in range(5)}
    assert got == {ipaddress.IPv4Address(f"10.9.0.{i}") for i in range(2, 7)}
    assert pool.gateway_address == ipaddress.IPv4Address("10.9.0.1")
    with pytest.raises(PoolExhausted):
        pool.allocate()


def test_release_makes_an_address_available_again() -> None:
    pool = AddressPool(ipaddress.ip_network("10.9.0.0/30"))
    a = pool.allocate()
    with pytest.raises(PoolExhausted):
        pool.allocate()
    pool.release(a)
    assert pool.allocate() == a


def test_choice_is_roughly_uniform() -> None:
    net = ipaddress.ip_network("10.9.0.0/27")  # 29 assignable addresses
    counts: collections.Counter[object] = collections.Counter()
    for _ in range(5800):
        pool = AddressPool(net)
        counts[pool.allocate()] += 1
    assert len(counts) == 29
    assert min(counts.values()) > 100 and max(counts.values()) < 320  # expected 200 each


def test_crowded_pool_still_finds_the_last_free_address() -> None:
    pool = AddressPool(ipaddress.ip_network("10.9.0.0/24"))
    taken = {pool.allocate() for _ in range(252)}
    last = pool.allocate()
    assert last not in taken
    assert pool.in_use == 253


def test_ipv6_pool() -> None:
    pool = AddressPool(ipaddress.ip_network("fd7a:201::/64"))
    a, b = pool.allocate(), pool.allocate()
    assert a != b and a in pool.network and a != pool.gateway_address
    assert pool.gateway_address == ipaddress.IPv6Address("fd7a:201::1")
