"""The gateway's session table: one lease per session, O(1) lookups, nothing left behind."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest

from veilgate.gateway.pool import AddressPool, PoolExhausted
from veilgate.gateway.sessions import PythonPeer, RoutedPeer, SessionTable
from veilgate.protocol.gateway import Session
from veilgate.protocol.keypair import Keypair

K = bytes(32)


class NoScan(dict[Any, Any]):
    """A dict that fails a test if anything walks it: every table operation must be a lookup."""

    def __iter__(self) -> Iterator[Any]:
        raise AssertionError("the table scanned a dictionary")

    def keys(self) -> Any:
        raise AssertionError("the table scanned a dictionary")

    def values(self) -> Any:
        raise AssertionError("the table scanned a dictionary")

    def items(self) -> Any:
        raise AssertionError("the table scanned a dictionary")


def keypair(index: int) -> Keypair:
    return Keypair(K, K, index, index + 1000, 0.0, False)


def session(number: int, *indices: int) -> Session:
    s = Session(number, bytes([number]) * 32, object(), 0.0)  # type: ignore[arg-type]
    kps = [keypair(i) for i in indices]
    s.current = kps[0] if kps else None
    s.previous = kps[1] if len(kps) > 1 else None
    return s


def table(v6: bool = True, size: int = 24) -> SessionTable:
    pool6 = AddressPool(ipaddress.IPv6Network("fd00:1::/64")) if v6 else None
    t = SessionTable(AddressPool(ipaddress.IPv4Network(f"10.9.0.0/{size}")), pool6)
    t.routes = NoScan()
    t.indices = NoScan()
    return t


def test_open_routes_both_addresses_to_the_session() -> None:
    t = table()
    s = session(1, 11)
    v4, v6 = t.open(s)
    assert v4 in t.pool4.network and v6 is not None and t.pool6 is not None and v6 in t.pool6.network
    assert t.session_to(v4.packed) is s and t.session_to(v6.packed) is s
    assert t.session_to(ipaddress.IPv4Address("10.9.0.250").packed) is None
    assert t.pool4.in_use == 1 and len(t) == 1


def test_follow_tracks_the_live_keypairs_indices() -> None:
    t = table()
    s = session(1, 11)
    t.open(s)
    t.follow(s, True)
    lease = t.lease(1)
    assert lease is not None and t.indices[11] is lease.peer and lease.peer.owner is s
    s.previous, s.current = s.current, keypair(12)  # a rekey
    t.follow(s, True)
    assert set(dict.keys(t.indices)) == {11, 12}
    s.previous = None  # the old keypair expired
    t.follow(s, True)
    assert set(dict.keys(t.indices)) == {12}


def test_an_index_taken_over_by_another_session_stays_with_it() -> None:
    t = table()
    one, two = session(1, 11), session(2, 22)
    t.open(one)
    t.open(two)
    t.follow(one, True)
    t.follow(two, True)
    two.current = keypair(11)  # the index was freed and drawn again by the other session
    t.follow(two, True)
    one.current = None
    t.follow(one, True)
    lease = t.lease(2)
    assert lease is not None and t.indices[11] is lease.peer


def test_close_gives_everything_back_and_touches_no_other_session() -> None:
    t = table()
    sessions = [session(n, 100 + n) for n in range(1, 40)]
    for s in sessions:
        t.open(s)
        t.follow(s, True)
    gone = sessions[5]
    lease = t.lease(gone.id)
    assert lease is not None
    addresses = lease.addresses
    t.close(gone.id)
    t.close(gone.id)  # twice: nothing happens
    assert all(a.packed not in t.routes and t.session_to(a.packed) is None for a in addresses)
    assert 105 + 1 not in t.indices and lease.peer.owner is None and len(t) == 38
    assert t.pool4.in_use == 38 and t.pool6 is not None and t.pool6.in_use == 38
    assert all(t.session_to(t.lease(s.id).addresses[0].packed) is s for s in sessions if s is not gone)  # type: ignore[union-attr]


def test_an_ended_session_is_closed_by_follow() -> None:
    t = table()
    s = session(1, 11)
    t.open(s)
    t.follow(s, True)
    t.follow(s, False)
    assert len(t) == 0 and 11 not in t.indices and t.pool4.in_use == 0 and len(t.routes) == 0


def test_an_exhausted_pool_leaves_nothing_behind() -> None:
    t = SessionTable(
        AddressPool(ipaddress.IPv4Network("10.9.0.0/24")), AddressPool(ipaddress.IPv6Network("fd00::/126"))
    )
    t.open(session(1))
    t.open(session(2))
    with pytest.raises(PoolExhausted):
        t.open(session(3))  # IPv4 has room, IPv6 does not: the IPv4 address goes back
    assert t.pool4.in_use == 2 and len(t) == 2


def test_a_compiled_path_is_told_each_change_with_the_addresses() -> None:
    t = table(v6=False)
    seen: list[tuple[RoutedPeer, int, tuple[bytes, ...]]] = []
    t.attach(PythonPeer, lambda peer, s, addresses: seen.append((peer, s.id, addresses)))
    s = session(1, 11)
    v4, _ = t.open(s)
    t.follow(s, True)
    lease = t.lease(1)
    assert lease is not None and seen == [(lease.peer, 1, (v4.packed,))]
    t.follow(s, False)
    assert len(seen) == 1  # an ended session is not updated, only dropped
