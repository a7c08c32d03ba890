"""The compiled data path (veilgate.fastpath) against the pure-Python one.

The TUN device is stood in for by a datagram socketpair (one read or write is one packet, as on
a TUN) and the network by UDP sockets on loopback, so the compiled loops do their real system
calls. Every datagram they seal is opened by the pure-Python keypair and the other way round.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate import fastpath
from veilgate.fastpath.keypair import CompiledKeypair
from veilgate.protocol import control
from veilgate.protocol.constants import (
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REPLAY_WINDOW,
)
from veilgate.protocol.errors import DecryptError, LocalProtocolError, RemoteProtocolError
from veilgate.protocol.keypair import EXPIRED, Keypair
from veilgate.protocol.messages import HDR_INIT
from veilgate.protocol.replay import ReplayWindow
from veilgate.transport.loop import DispatchSelector

K1, K2 = bytes(range(32)), bytes(range(32, 64))

# Whether the extension had to be built is checked by tests/unit/test_fastpath_built.py, which this
# skip does not reach.
pytestmark = pytest.mark.skipif(not fastpath.BUILT, reason="the compiled data path is not built")


def ipv4(src: str, dst: str, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        0,
        0,
        64,
        17,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header + payload


def pair(created: float = 0.0) -> tuple[CompiledKeypair, Keypair]:
    """A compiled keypair (index 7 here, 9 at the peer) and the pure-Python peer of it."""
    return CompiledKeypair(K1, K2, 7, 9, created, True), Keypair(K2, K1, 9, 7, created, False)


# ---------------------------------------------------------------------- keys


def test_compiled_and_python_keypairs_open_each_others_messages() -> None:
    fast, slow = pair()
    reference = Keypair(K1, K2, 7, 9, 0.0, True)
    for payload in (b"", b"x", bytes(range(256)) * 5, bytes(1420)):
        d = fast.seal(payload)
        assert d == reference.seal(payload)  # byte for byte what the Python keypair sends
        pad = -len(payload) % 16
        assert slow.open(d, int.from_bytes(d[8:16], "little")) == payload + bytes(pad)
        back = slow.seal(payload)
        assert fast.open(back, int.from_bytes(back[8:16], "little")) == payload + bytes(pad)
    assert fast.send_counter == 4


def test_compiled_keypair_refuses_replays_forgeries_and_exhaustion() -> None:
    fast, slow = pair()
    d = slow.seal(b"hello")
    fast.open(d, 0)
    with pytest.raises(RemoteProtocolError) as replay:
        fast.open(d, 0)
    assert replay.value.reason == "replay"
    forged = bytearray(slow.seal(b"hello"))
    forged[-1] ^= 1
    with pytest.raises(DecryptError):
        fast.open(bytes(forged), 1)
    assert fast.keys.top == 0  # a forgery does not move the window
    with pytest.raises(DecryptError):
        fast.open(b"\x05\x01\x00\x00" + bytes(8), 0)  # shorter than a tag
    fast.send_counter = REJECT_AFTER_MESSAGES
    assert fast.state(0.0) is EXPIRED
    with pytest.raises(LocalProtocolError):
        fast.seal(b"")


def test_compiled_keys_refuse_a_counter_going_back_and_out_of_range_arguments() -> None:
    fast, _ = pair()
    fast.seal(b"")
    with pytest.raises(ValueError):
        fast.send_counter = 0  # a nonce used again
    assert fast.send_counter == 1
    for index in (2**32 + 5, 2**64 + 5, -1):
        with pytest.raises((ValueError, OverflowError)):
            fastpath.Keys(K1, K2, index, 9, 0.0)
    with pytest.raises(ValueError):
        fastpath.Keys(K1[:31], K2, 1, 9, 0.0)
    # The limits are the module's own (fastpath.h): no caller passes them any more.
    too_many: Any = fastpath.Keys
    with pytest.raises(TypeError):
        too_many(K1, K2, 1, 9, 0.0, REJECT_AFTER_MESSAGES, REPLAY_WINDOW)
    for cls in (fastpath.ClientPath, fastpath.GatewayPath):
        blank: Any = cls.__new__(cls)
        with pytest.raises(ValueError):
            blank.take()
        with pytest.raises(ValueError):
            fastpath.Poller().add(0, blank, fastpath.KIND_TUN, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3 * REPLAY_WINDOW), min_size=1, max_size=120))
def test_compiled_replay_window_agrees_with_the_python_one(counters: list[int]) -> None:
    sender = Keypair(K2, K1, 9, 7, 0.0, False)
    sealed: dict[int, bytes] = {}
    fast = CompiledKeypair(K1, K2, 7, 9, 0.0, True)
    window = ReplayWindow()
    for c in counters:
        if c not in sealed:
            sender.send_counter = c
            sealed[c] = sender.seal(b"p")
        expected = window.check(c) and window.update(c)
        try:
            fast.open(sealed[c], c)
            got = True
        except RemoteProtocolError as exc:
            assert exc.reason == "replay"
            got = False
        assert got == expected, c
        assert fast.keys.top == window.top


# ---------------------------------------------------------------------- client loops


class ClientRig:
    """A ClientPath on a socketpair for its TUN (``vnet``: with the virtio-net header) and a UDP
    socket connected to a stand-in gateway's."""

    def __init__(self, *, gso: bool = False, vnet: bool = False) -> None:
        self.tun, self.host = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.gw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.gw.bind(("127.0.0.1", 0))
        self.udp.bind(("127.0.0.1", 0))
        self.udp.connect(self.gw.getsockname())
        self.gw.connect(self.udp.getsockname())
        for s in (self.tun, self.udp, self.gw, self.host):
            s.setblocking(False)
        self.path = fastpath.ClientPath(self.tun.fileno(), self.udp.fileno(), gso, False, vnet=vnet)
        now = time.monotonic()
        self.mine, self.gateway = pair(now)

    def close(self) -> None:
        for s in (self.tun, self.host, self.udp, self.gw):
            s.close()

    def gateway_sends(self, payload: bytes) -> None:
        self.gw.send(self.gateway.seal(payload))


@pytest.fixture
def rig() -> Iterator[ClientRig]:
    r = ClientRig()
    yield r
    r.close()


def settle() -> None:
    time.sleep(0.01)


def serve(ready: Any, *args: int) -> None:
    """Call a loop until it has read everything: after a quiet spell a loop takes one datagram per
    wake-up (the lone-packet rule; epoll would wake it again)."""
    for _ in range(8):
        ready(*args)


def test_client_seals_tun_packets_and_passes_them_on_without_a_keypair(rig: ClientRig) -> None:
    packet = ipv4("10.0.0.2", "10.9.9.9", b"data" * 10)
    rig.host.send(packet)
    rig.path.tun_ready()
    pending, activity = rig.path.take()
    assert pending == [(fastpath.PENDING_TUN, packet, 0, None, 0)] and activity is None
    assert isinstance(pending[0], fastpath.Pending) and pending[0].data == packet
    with pytest.raises(BlockingIOError):
        rig.gw.recv(2000)

    rig.path.set_keys(rig.mine.keys, (rig.mine.keys,))
    before = time.monotonic()
    for _ in range(3):
        rig.host.send(packet)
    rig.path.tun_ready()
    settle()
    for counter in range(3):
        d = rig.gw.recv(2000)
        assert rig.gateway.open(d, counter)[: len(packet)] == packet
    pending, activity = rig.path.take()
    assert pending == []
    assert isinstance(activity, fastpath.Activity)
    assert (activity.tx_packets, activity.tx_bytes) == (3, 3 * len(packet))
    assert (activity.authenticated, activity.rx_packets, activity.rx_bytes) == (0, 0, 0)
    assert before <= activity.first_unanswered <= activity.last_tx <= time.monotonic()
    assert rig.path.take()[1] is None  # handed over once


def test_client_opens_datagrams_and_writes_ip_packets(rig: ClientRig) -> None:
    rig.path.set_keys(rig.mine.keys, (rig.mine.keys,))
    packet = ipv4("10.9.9.9", "10.0.0.2", b"reply")
    rig.gateway_sends(packet)
    rig.gateway_sends(b"")  # keepalive
    rig.gateway_sends(control.probe_reply_message(b"12345678"))
    settle()
    serve(rig.path.udp_ready)
    assert rig.host.recv(2000) == packet  # padding stripped
    pending, activity = rig.path.take()
    assert len(pending) == 1
    kind, data, sock, addr, index = pending[0]
    assert (kind, sock, addr, index) == (fastpath.PENDING_OPENED, 0, None, 7)  # opened with index 7
    assert control.decode_control(data).body == b"12345678"
    assert activity is not None
    # Three datagrams authenticated (the packet, the keepalive, the control message), one IP packet delivered.
    assert (activity.authenticated, activity.rx_packets, activity.rx_bytes) == (3, 1, len(packet))
    assert activity.first_unanswered == 0.0  # nothing sent: nothing unanswered
    assert activity.last_rx <= time.monotonic()


def test_client_drops_and_counts_forgeries_replays_and_non_ip(rig: ClientRig) -> None:
    rig.path.set_keys(rig.mine.keys, (rig.mine.keys,))
    good = rig.gateway.seal(ipv4("10.9.9.9", "10.0.0.2", b"x"))
    forged = bytearray(rig.gateway.seal(ipv4("10.9.9.9", "10.0.0.2", b"y")))
    forged[20] ^= 0x40
    rig.gw.send(good)
    rig.gw.send(good)  # replay
    rig.gw.send(bytes(forged))
    rig.gateway_sends(b"\x99" * 24)  # authentic, not IP
    settle()
    serve(rig.path.udp_ready)
    rig.host.recv(2000)
    with pytest.raises(BlockingIOError):
        rig.host.recv(2000)
    counters = rig.path.counters()
    assert counters["drop-replay"] == 1 and counters["drop-decrypt"] == 1 and counters["drop-not-ip"] == 1
    pending, _ = rig.path.take()
    assert pending == []


def test_client_passes_on_what_it_does_not_know(rig: ClientRig) -> None:
    rig.path.set_keys(None, (rig.mine.keys,))
    other = Keypair(K2, K1, 9, 8, 0.0, False)  # to a receiver index the path was not given
    unknown = other.seal(b"")
    handshake = HDR_INIT + bytes(100)
    short = b"\x05\x01\x00\x00" + bytes(10)
    for d in (unknown, handshake, short):
        rig.gw.send(d)
    settle()
    serve(rig.path.udp_ready)
    pending, _ = rig.path.take()
    assert pending == [(fastpath.PENDING_DATAGRAM, d, 0, None, 0) for d in (unknown, handshake, short)]


def test_client_leaves_an_expired_keypair_to_python() -> None:
    rig = ClientRig()
    try:
        old = CompiledKeypair(K1, K2, 7, 9, time.monotonic() - REJECT_AFTER_TIME - 1, True)
        rig.path.set_keys(old.keys, (old.keys,))
        packet = ipv4("10.0.0.2", "10.9.9.9", b"late")
        rig.host.send(packet)
        rig.path.tun_ready()
        assert rig.path.take()[0] == [(fastpath.PENDING_TUN, packet, 0, None, 0)]
        d = Keypair(K2, K1, 9, 7, 0.0, False).seal(packet)
        rig.gw.send(d)
        settle()
        serve(rig.path.udp_ready)
        assert rig.path.take()[0] == [(fastpath.PENDING_DATAGRAM, d, 0, None, 0)]
    finally:
        rig.close()


def test_client_sends_gso_runs_that_arrive_as_separate_datagrams() -> None:
    rig = ClientRig(gso=True)
    try:
        rig.path.set_keys(rig.mine.keys, (rig.mine.keys,))
        rig.path.tun_ready()  # a first wake-up, so that the burst below is not a "quiet" one
        packets = [ipv4("10.0.0.2", "10.9.9.9", bytes([i]) * 1000) for i in range(10)]
        packets.append(ipv4("10.0.0.2", "10.9.9.9", b"short"))
        for p in packets:
            rig.host.send(p)
        rig.path.tun_ready()
        settle()
        for counter, p in enumerate(packets):
            d = rig.gw.recv(4000)
            assert rig.gateway.open(d, counter)[: len(p)] == p
        counters = rig.path.counters()
        assert counters["udp-datagrams-out"] == 11
        assert counters["udp-sends"] < 11 or not rig.path.gso
    finally:
        rig.close()


# ---------------------------------------------------------------------- gateway loops


class GatewayRig:
    CLIENT_V4 = socket.inet_aton("10.0.0.2")

    def __init__(self, *, client_to_client: bool = True) -> None:
        self.tun, self.host = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.bind(("127.0.0.1", 0))
        self.client.connect(self.udp.getsockname())
        for s in (self.tun, self.host, self.udp, self.client):
            s.setblocking(False)
        self.routes: dict[bytes, fastpath.Peer] = {}
        self.indices: dict[int, fastpath.Peer] = {}
        self.path = fastpath.GatewayPath(self.tun.fileno(), self.routes, self.indices, client_to_client)
        self.sock = self.path.add_socket(self.udp.fileno(), False, False)
        self.mine, self.peer_kp = pair(time.monotonic())
        self.session = object()
        self.peer = fastpath.Peer(self.session)
        host, port = self.client.getsockname()
        sockaddr = struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", port, socket.inet_aton(host))
        self.peer.update(self.mine.keys, (self.mine.keys,), self.sock, sockaddr, self.CLIENT_V4, None)
        self.routes[self.CLIENT_V4] = self.peer
        self.indices[7] = self.peer

    def close(self) -> None:
        for s in (self.tun, self.host, self.udp, self.client):
            s.close()


@pytest.fixture
def grig() -> Iterator[GatewayRig]:
    r = GatewayRig()
    yield r
    r.close()


def test_gateway_routes_tun_packets_to_the_session_of_their_destination(grig: GatewayRig) -> None:
    to_client = ipv4("10.9.9.9", "10.0.0.2", b"down")
    nowhere = ipv4("10.9.9.9", "10.0.0.3", b"nobody")
    grig.host.send(to_client)
    grig.host.send(nowhere)
    grig.path.tun_ready()
    settle()
    d = grig.client.recv(2000)
    assert grig.peer_kp.open(d, 0)[: len(to_client)] == to_client
    pending, touched = grig.path.take()
    assert pending == [(fastpath.PENDING_TUN, nowhere, -1, None, 0)]
    assert touched == [grig.peer]
    activity = grig.peer.take()
    assert isinstance(activity, fastpath.Activity)
    assert (activity.tx_packets, activity.tx_bytes, activity.authenticated) == (1, len(to_client), 0)
    assert activity.first_unanswered == 0.0  # a gateway's peer does not keep it


def test_gateway_delivers_only_from_the_assigned_source_and_known_address(grig: GatewayRig) -> None:
    good = ipv4("10.0.0.2", "10.9.9.9", b"up")
    spoofed = ipv4("10.0.0.77", "10.9.9.9", b"spoofed")
    for p in (good, spoofed, b""):
        grig.client.send(grig.peer_kp.seal(p))
    settle()
    serve(grig.path.udp_ready, grig.sock)
    assert grig.host.recv(2000) == good
    with pytest.raises(BlockingIOError):
        grig.host.recv(2000)
    assert grig.path.counters()["drop-source"] == 1
    _, touched = grig.path.take()
    assert touched == [grig.peer]
    activity = grig.peer.take()
    assert (activity.authenticated, activity.rx_packets, activity.rx_bytes) == (3, 1, len(good))

    # From another address (the client roamed): Python decides, with the address as recvfrom gives it.
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        other.bind(("127.0.0.1", 0))
        d = grig.peer_kp.seal(good)
        other.sendto(d, grig.udp.getsockname())
        settle()
        serve(grig.path.udp_ready, grig.sock)
        pending, _ = grig.path.take()
        assert pending == [(fastpath.PENDING_DATAGRAM, d, grig.sock, other.getsockname(), 0)]
    finally:
        other.close()


def test_gateway_passes_on_control_messages_opened_with_their_index(grig: GatewayRig) -> None:
    probe = control.probe_message(42)
    grig.client.send(grig.peer_kp.seal(probe))
    settle()
    serve(grig.path.udp_ready, grig.sock)
    pending, _ = grig.path.take()
    assert len(pending) == 1
    kind, data, sock, addr, index = pending[0]
    assert (kind, sock, addr, index) == (fastpath.PENDING_OPENED, grig.sock, grig.client.getsockname(), 7)
    assert control.decode_control(data).type == control.CTRL_PROBE


def test_gateway_keeps_clients_apart_when_asked() -> None:
    rig = GatewayRig(client_to_client=False)
    try:
        rig.routes[socket.inet_aton("10.0.0.3")] = fastpath.Peer(None)
        rig.client.send(rig.peer_kp.seal(ipv4("10.0.0.2", "10.0.0.3", b"hi neighbour")))
        rig.client.send(rig.peer_kp.seal(ipv4("10.0.0.2", "10.9.9.9", b"hi world")))
        settle()
        serve(rig.path.udp_ready, rig.sock)
        assert rig.host.recv(2000)[16:20] == socket.inet_aton("10.9.9.9")
        assert rig.path.counters()["client-to-client-dropped"] == 1
    finally:
        rig.close()


def test_a_session_without_a_udp_address_is_left_to_python(grig: GatewayRig) -> None:
    grig.peer.update(grig.mine.keys, (grig.mine.keys,), fastpath.ROUTE_NONE, None, grig.CLIENT_V4, None)
    packet = ipv4("10.9.9.9", "10.0.0.2", b"via tcp")
    grig.host.send(packet)
    grig.path.tun_ready()
    assert grig.path.take()[0] == [(fastpath.PENDING_TUN, packet, -1, None, 0)]
    d = grig.peer_kp.seal(ipv4("10.0.0.2", "10.9.9.9", b"up"))
    grig.client.send(d)
    settle()
    serve(grig.path.udp_ready, grig.sock)
    assert grig.path.take()[0] == [(fastpath.PENDING_DATAGRAM, d, grig.sock, grig.client.getsockname(), 0)]


# ---------------------------------------------------------------------- the keypair rule


@pytest.mark.parametrize(
    ("send_counter", "client_sends", "gateway_sends", "opens"),
    [
        (REKEY_AFTER_MESSAGES - 1, True, True, True),
        # Due for rekey: the client (the initiator) leaves the packet to its core, which rekeys;
        # the gateway (the responder) goes on sending, and both go on receiving.
        (REKEY_AFTER_MESSAGES, False, True, True),
        (REJECT_AFTER_MESSAGES, False, False, False),  # out of counters: expired, the core drops
    ],
)
def test_both_sides_apply_the_keypair_rule_by_counter(
    send_counter: int, client_sends: bool, gateway_sends: bool, opens: bool
) -> None:
    rig, grig = ClientRig(), GatewayRig()
    try:
        rig.path.set_keys(rig.mine.keys, (rig.mine.keys,))
        up = ipv4("10.0.0.2", "10.9.9.9", b"up")
        down = ipv4("10.9.9.9", "10.0.0.2", b"down")
        for r, path_sends, packet, out in (
            (rig, client_sends, up, rig.gw),
            (grig, gateway_sends, down, grig.client),
        ):
            r.mine.send_counter = send_counter
            r.host.send(packet)
            r.path.tun_ready()
            settle()
            pending = r.path.take()[0]
            if path_sends:
                assert pending == [] and len(out.recv(2000)) > len(packet)
            else:
                assert [(p.kind, p.data) for p in pending] == [(fastpath.PENDING_TUN, packet)]
        d = rig.gateway.seal(down)
        rig.gw.send(d)
        settle()
        serve(rig.path.udp_ready)
        g = grig.peer_kp.seal(up)
        grig.client.send(g)
        settle()
        serve(grig.path.udp_ready, grig.sock)
        if opens:
            assert rig.host.recv(2000) == down and grig.host.recv(2000) == up
        else:
            assert [(p.kind, p.data) for p in rig.path.take()[0]] == [(fastpath.PENDING_DATAGRAM, d)]
            assert [(p.kind, p.data) for p in grig.path.take()[0]] == [(fastpath.PENDING_DATAGRAM, g)]
    finally:
        rig.close()
        grig.close()


# ---------------------------------------------------------------------- the poller


def test_compiled_reader_runs_before_its_python_callback(rig: ClientRig) -> None:
    sel = DispatchSelector()
    seen: list[Any] = []
    try:
        rig.path.set_keys(rig.mine.keys, (rig.mine.keys,))
        sel.add_compiled_reader(
            rig.tun.fileno(), rig.path, fastpath.KIND_TUN, 0, lambda: seen.append(rig.gw.recv(2000))
        )
        assert sel.select(0) == [] and seen == []
        packet = ipv4("10.0.0.2", "10.9.9.9", b"now")
        rig.host.send(packet)
        deadline = time.monotonic() + 2
        while not seen and time.monotonic() < deadline:
            sel.select(0.1)
        # The callback found the datagram already sent: the compiled loop ran first.
        assert len(seen) == 1 and rig.gateway.open(seen[0], 0)[: len(packet)] == packet
        assert sel.remove_direct_reader(rig.tun.fileno())
        rig.host.send(packet)
        assert sel.select(0) == []
        with pytest.raises(BlockingIOError):
            rig.gw.recv(2000)
    finally:
        sel.close()


def test_switch_off_by_environment() -> None:
    code = "import os; from veilgate import fastpath; print(fastpath.wanted(os.environ))"
    for value, expected in (("0", "False"), ("1", str(fastpath.BUILT))):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, fastpath.ENV: value},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == expected
    assert fastpath.wanted({}) is fastpath.BUILT
    assert fastpath.wanted({fastpath.ENV: "0"}) is False
