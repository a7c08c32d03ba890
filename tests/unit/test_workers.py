"""Many workers, without the processes: who owns what, the pools' partition, the handoff of a
session's rekey between two cores, the relay's encoding and the status sum."""

from __future__ import annotations

import ipaddress
import secrets
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from veilgate.gateway.listeners import UdpEndpoint
from veilgate.gateway.pool import AddressPool, PoolExhausted
from veilgate.gateway.relay import _HANDOFF, decode_addr, decode_handoff, encode_addr
from veilgate.gateway.shard import LOW32, Shard
from veilgate.gateway.worker import WorkerLink
from veilgate.gateway.workers import merge
from veilgate.protocol import messages
from veilgate.protocol.constants import REJECT_AFTER_TIME
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.events import Event, Handoff, HandshakeElsewhere, SessionEstablished, SessionRekeyed
from veilgate.protocol.gateway import GatewayProtocol
from veilgate.tun.steering import worker_of_address, worker_of_index

from .harness import KEYPAIR, AcceptAll, Net, ipv4_packet


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_indices_and_addresses_follow_the_kernels_rule(n: int) -> None:
    for k in range(n):
        shard = Shard(k, n)
        for _ in range(200):
            index = shard.random_index()
            assert 0 <= index <= LOW32 and worker_of_index(index, n) == k
        for value in (0, 1, 0x0AC90005, 0xFFFFFFFF, int(ipaddress.IPv6Address("fd7a:201::dead:beef"))):
            address = ipaddress.ip_address(value)
            assert shard.owns_address(value) == (worker_of_address(address, n) == k)


def test_count_owned_is_exact_across_blocks() -> None:
    for n in (2, 3, 7):
        for k in range(n):
            shard = Shard(k, n)
            for first, last in [(5, 40), (LOW32 - 10, LOW32 + 12), ((3 << 32) - 5, (5 << 32) + 9)]:
                if last - first < 100:
                    brute = sum(1 for v in range(first, last + 1) if (v & LOW32) % n == k)
                else:  # head, two full blocks, tail
                    head = sum(1 for v in range(first, 3 << 32) if (v & LOW32) % n == k)
                    tail = sum(1 for v in range(5 << 32, last + 1) if (v & LOW32) % n == k)
                    brute = head + 2 * len(range(k, LOW32 + 1, n)) + tail
                assert shard.count_owned(first, last) == brute


@pytest.mark.parametrize("n", [2, 3])
def test_the_workers_pools_never_hand_out_one_address_twice(n: int) -> None:
    network = ipaddress.ip_network("10.9.0.0/26")
    pools = [AddressPool(network, shard=Shard(k, n)) for k in range(n)]
    handed: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, int] = {}
    for k, pool in enumerate(pools):
        while True:
            try:
                address = pool.allocate()
            except PoolExhausted:
                break
            assert address not in handed, f"{address} from worker {handed.get(address)} and {k}"
            assert int(address) % n == k
            handed[address] = k
        assert pool.in_use == pool.size
    hosts = {a for a in network.hosts() if a != network.network_address + 1}
    assert set(handed) == hosts, "together the workers hand out the whole pool"
    v6 = AddressPool(ipaddress.ip_network("fd7a:201::/64"), shard=Shard(1, n))
    for _ in range(100):
        assert (int(v6.allocate()) & LOW32) % n == 1


class TwoWorkers:
    """Two gateway cores as two workers: initiations go to ``accepting`` (the worker that accepted
    the client's new connection); anything else to the core holding its receiver index; message 3
    of a rekey read by the other core is handed to the owner, as the daemons' relay does."""

    def __init__(self, key: KeyPair, *, hand_over: bool = True) -> None:
        self.cores = [
            GatewayProtocol(key, AcceptAll(), new_keypair=KEYPAIR, random_index=Shard(k, 2).random_index)
            for k in range(2)
        ]
        self.accepting = 0
        self.hand_over = hand_over
        self.handoffs = 0
        owner = self.cores[0]
        self.cores[1].elsewhere = lambda token, key: hand_over and token == owner_token(owner)
        self._events: list[Event] = []

    def receive_datagram(self, data: bytes, addr: object, now: float) -> bytes | None:
        self.now = now
        core = self.cores[self.accepting]
        if data[0] != messages.TYPE_HANDSHAKE_INIT:
            index = int.from_bytes(data[4:8], "little")
            core = next((c for c in self.cores if c.holds_index(index)), core)
        return core.receive_datagram(data, addr, now)  # type: ignore[arg-type]

    def datagrams_to_send(self) -> list[tuple[bytes, object]]:
        return [d for core in self.cores for d in core.datagrams_to_send()]

    def next_event(self) -> Event | None:
        for k, core in enumerate(self.cores):
            event = core.next_event()
            if isinstance(event, HandshakeElsewhere):
                self.handoffs += 1
                self.cores[1 - k].complete_handoff(event.handoff, event.endpoint, self.now)  # type: ignore[arg-type]
                return self.next_event()
            if event is not None:
                return event
        return None

    now = 0.0

    def assign(self, session_id: int, config: object, now: float) -> None:
        self.cores[0].assign(session_id, config, now)  # type: ignore[arg-type]

    def get_timer(self) -> float | None:
        timers = [t for t in (c.get_timer() for c in self.cores) if t is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        for core in self.cores:
            core.handle_timer(now)


def owner_token(core: GatewayProtocol) -> bytes | None:
    session = next(iter(core.sessions.values()), None)
    return session.resume_token if session is not None else None


@pytest.mark.parametrize("hand_over", [True, False])
def test_a_rekey_read_by_another_worker_goes_on_with_the_same_session(hand_over: bool) -> None:
    key = KeyPair.generate()
    workers = TwoWorkers(key, hand_over=hand_over)
    net = Net(gateway=workers, gateway_key=key)  # type: ignore[arg-type]
    net.connect()
    first = workers.cores[0].sessions
    assert len(first) == 1 and not workers.cores[1].sessions
    session = next(iter(first.values()))
    established = [e for e in net.gateway_events if isinstance(e, SessionEstablished)]
    # The client's next handshake reaches the other worker (a new connection it accepted).
    workers.accepting = 1
    for _ in range(30):
        net.run(10)
        net.client_send(ipv4_packet(net.client_ip, "192.0.2.1", b"x" * 40))
        if any(
            isinstance(e, (SessionRekeyed, SessionEstablished))
            for e in net.gateway_events[len(established) :]
        ):
            break
    later = net.gateway_events[len(established) :]
    if not hand_over:
        # Without the handoff the other worker opens a second session: what the relay prevents.
        assert workers.cores[1].sessions
        return
    assert workers.handoffs >= 1
    assert any(isinstance(e, SessionRekeyed) for e in later) and not any(
        isinstance(e, SessionEstablished) for e in later
    )
    assert not workers.cores[1].sessions, "the other worker holds nothing"
    assert workers.cores[0].sessions == {session.id: session}
    assert session.current is not None and workers.cores[0].holds_index(session.current.local_index)
    assert Shard(1, 2).owner_of_index(session.current.local_index) == 1, "the index the other worker drew"
    before = len(net.delivered_to_gateway)
    net.client_send(ipv4_packet(net.client_ip, "192.0.2.1", b"after"))
    net.run(1)
    assert len(net.delivered_to_gateway) > before and net.delivered_to_gateway[-1].endswith(b"after")


def test_relay_encodings_round_trip() -> None:
    for addr in [("192.0.2.7", 51820), ("2001:db8::1", 443)]:
        assert decode_addr(encode_addr(addr) + b"rest") == (addr, b"rest")
    t = [secrets.token_bytes(32) for _ in range(5)]
    h = Handoff(t[0], t[1], t[2], t[3], t[4], 7, 0xFFFFFFFF, secrets.token_bytes(16))
    body = _HANDOFF.pack(
        h.resume, h.static_public, h.send_key, h.recv_key, h.local_index, h.remote_index, h.next_resume
    )
    assert decode_handoff(body + h.final_digest + b"\0where") == (h, b"\0where")


def test_status_sum() -> None:
    a = {"sessions": 2, "under_load": False, "udp": {"gso": True, "sends": 3}, "data_path": "compiled"}
    b = {"sessions": 5, "under_load": True, "udp": {"gso": False, "sends": 4}, "data_path": "compiled"}
    assert merge([a, b]) == {
        "sessions": 7,
        "under_load": True,
        "udp": {"gso": False, "sends": 7},
        "data_path": "compiled",
    }


class _Relay:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.sent: list[tuple[int, Handoff]] = []

    def handoff(self, worker: int, where: bytes, h: Handoff) -> None:
        self.sent.append((worker, h))


def test_lent_indices_are_forgotten_once_no_keypair_can_use_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every handoff lends an index; the loans must not pile up over a gateway's life."""
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    gateway = SimpleNamespace(core=SimpleNamespace(holds_index=lambda index: False))
    relay = _Relay()
    link = WorkerLink(gateway, Shard(0, 2), relay, None)  # type: ignore[arg-type]
    link.resume_owner[b"t" * 32] = 1
    endpoint = UdpEndpoint(("192.0.2.7", 4000), None)  # type: ignore[arg-type]

    def lend(index: int) -> None:
        link.hand_off(
            Handoff(b"t" * 32, b"k" * 32, b"s" * 32, b"r" * 32, b"n" * 32, index, 1, b"d" * 16), endpoint
        )

    for index in range(0, 2000, 2):
        lend(index)
        clock[0] += 0.5
    assert len(relay.sent) == 1000
    assert len(link.lent) <= REJECT_AFTER_TIME / 0.5 + 1, "loans older than a keypair's life are gone"
    assert link.owner_of(messages.HDR_TRANSPORT + (1998).to_bytes(4, "little") + bytes(24)) == 1
    assert link.owner_of(messages.HDR_TRANSPORT + (0).to_bytes(4, "little") + bytes(24)) is None
