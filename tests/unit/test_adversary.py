"""The gateway core against an active attacker: handshake floods, corrupted handshakes, credential reuse.

Each test plays an attacker with what it really holds: the gateway's public key (it is in the
provider document), forgeable source addresses, an on-path position to flip bits, or a valid
credential it wants to stretch into many sessions.
"""

from __future__ import annotations

import ipaddress

import pytest

from veilgate.protocol import constants, messages
from veilgate.protocol.cookie import CookieGenerator
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.errors import RemoteProtocolError
from veilgate.protocol.events import HandshakeRefused, PathStalled, SessionRekeyed
from veilgate.protocol.gateway import GatewayProtocol
from veilgate.protocol.handshake import FinalPayload, InitiatorHandshake
from veilgate.protocol.handshake import ResponderHandshake as _Responder
from veilgate.protocol.pending import PendingHandshakes

from .harness import AcceptAll, Addr, Link, Net, ipv4_packet


class FloodedNet(Net):
    """A Net whose gateway also answers a flood: datagrams to other addresses go nowhere."""

    def flush(self) -> None:
        out = self.gateway.datagrams_to_send()
        for data, addr in out:
            if addr == self.addr:
                self._queue(False, data)
        super().flush()


def spoofed_init(gateway_public: bytes) -> bytes:
    """A message 1 with a valid mac1, as anyone who read the provider document can make."""
    return InitiatorHandshake(
        KeyPair.generate(), gateway_public, 1, CookieGenerator(gateway_public), 0.0
    ).init_message


def spoof_source(i: int) -> Addr:
    return Addr(str(ipaddress.IPv4Address("198.18.0.0") + i % 60000), 1024 + i % 50000)


def flood(gateway: GatewayProtocol, init: bytes, net: Net, rate: int, seconds: float) -> None:
    """Spoofed message 1s at ``rate`` per second while the legitimate net runs alongside."""
    sent = 0
    for _ in range(int(seconds * 10)):
        for _ in range(rate // 10):
            gateway.receive_datagram(init, spoof_source(sent), net.now)
            sent += 1
        net.run(0.1)


def test_a_slow_spoofed_flood_keeps_no_client_out() -> None:
    """Below the rate that turns cookies on, spoofed initiations once filled the pending table for
    good (each lives 10 s): clients with a cookie were refused and established sessions could not
    rekey. The fill now turns cookies on, and a proven initiation always finds a slot."""
    gateway_key = KeyPair.generate()
    capacity = 256
    rate = 30  # under the rate that demands cookies, and over capacity / timeout: it used to fill the table
    gateway = GatewayProtocol(gateway_key, AcceptAll(), max_pending=capacity, under_load_rate=rate * 2)
    established = FloodedNet(gateway=gateway, gateway_key=gateway_key)
    established.connect()
    assert established.client.connected
    init = spoofed_init(gateway_key.public)

    flood(gateway, init, established, rate, constants.PENDING_HANDSHAKE_TIMEOUT + 2)
    assert gateway.pending_handshakes <= capacity // 8 + 1
    assert gateway.counters["cookie-sent"] > 0

    newcomer = FloodedNet(gateway=gateway, gateway_key=gateway_key)
    newcomer.addr = Addr("192.0.2.77", 5555)
    newcomer.now = established.now
    newcomer.client.connect(newcomer.now)
    for _ in range(20):
        flood(gateway, init, newcomer, rate, 0.1)
    assert newcomer.client.connected, "a client that answers the cookie must get in during the flood"
    assert gateway.counters["drop-pending-full"] == 0

    # The established session rekeys in the flood, and its traffic flows throughout.
    established.now = newcomer.now
    rekeys_before = sum(isinstance(e, SessionRekeyed) for e in established.gateway_events)
    ip = established.client_ip
    for i in range(int(constants.REKEY_AFTER_TIME) + 10):
        established.client_send(ipv4_packet(ip, "198.51.100.1", i.to_bytes(4, "big")))
        flood(gateway, init, established, rate, 1.0)
    assert sum(isinstance(e, SessionRekeyed) for e in established.gateway_events) > rekeys_before
    assert established.client.connected
    assert len(established.delivered_to_gateway) == int(constants.REKEY_AFTER_TIME) + 10


def proven_init(gateway: GatewayProtocol, gateway_public: bytes, addr: Addr, now: float) -> None:
    """An attacker that really receives at ``addr``: it answers the cookie reply, never message 2."""
    hs = InitiatorHandshake(
        KeyPair.generate(), gateway_public, 5, cookies := CookieGenerator(gateway_public), now
    )
    gateway.receive_datagram(hs.init_message, addr, now)
    reply = gateway.datagrams_to_send()[-1][0]
    cookies.consume_reply(messages.CookieReply.decode(reply), now)
    gateway.receive_datagram(hs.restamp(now), addr, now)
    gateway.datagrams_to_send()


def test_a_client_with_a_cookie_gets_a_slot_in_a_full_table() -> None:
    gateway_key = KeyPair.generate()
    gateway = GatewayProtocol(gateway_key, AcceptAll(), max_pending=8)
    gateway.force_under_load = True  # from the first: the rate, say, is high
    for i in range(8):
        proven_init(gateway, gateway_key.public, spoof_source(i), 0.0)
    assert gateway.pending_handshakes == 8
    gateway.receive_datagram(spoofed_init(gateway_key.public), spoof_source(99), 0.0)
    assert gateway.pending_handshakes == 8 and gateway.counters["cookie-sent"] == 9
    net = FloodedNet(gateway=gateway, gateway_key=gateway_key)
    net.now = 0.0
    net.connect()
    assert net.client.connected
    assert net.client.counters["cookie-replies"] == 1
    assert gateway.counters["pending-evicted"] == 1


def test_the_pending_table_evicts_unproven_entries_first_then_the_oldest() -> None:
    gateway_key = KeyPair.generate()
    init = messages.HandshakeInit.decode(spoofed_init(gateway_key.public))

    def entry(index: int) -> _Responder:
        return _Responder(gateway_key, init, index, 0.0, None)

    table = PendingHandshakes(3)
    assert table.add(entry(1), proven=False)
    assert table.add(entry(2), proven=True)
    assert table.add(entry(3), proven=False)
    assert not table.add(entry(4), proven=False)
    assert table.add(entry(5), proven=True)  # takes the place of 1, the oldest unproven
    assert 1 not in table and 3 in table
    assert table.add(entry(6), proven=True)  # then 3
    assert table.add(entry(7), proven=True)  # then 2, the oldest proven
    assert [i for i in range(1, 8) if i in table] == [5, 6, 7]
    assert table.unproven == 0


def test_initiations_are_limited_per_ip_whatever_the_port_and_per_ipv6_64() -> None:
    gateway_key = KeyPair.generate()
    for sources in (
        [Addr("192.0.2.9", port) for port in range(1000, 1100)],
        [Addr(str(ipaddress.IPv6Address("2001:db8:1:2::") + i * 7919), 4000) for i in range(100)],
    ):
        gateway = GatewayProtocol(gateway_key, AcceptAll())
        gateway.force_under_load = True
        answered = 0
        for addr in sources:
            # Each source address answers its cookie (it really receives there) and tries again.
            client = InitiatorHandshake(
                KeyPair.generate(), gateway_key.public, 5, cookies := CookieGenerator(gateway_key.public), 0.0
            )
            gateway.receive_datagram(client.init_message, addr, 0.0)
            reply = gateway.datagrams_to_send()[-1][0]
            cookies.consume_reply(messages.CookieReply.decode(reply), 0.0)
            gateway.receive_datagram(client.restamp(0.0), addr, 0.0)
            out = gateway.datagrams_to_send()
            answered += bool(out) and out[-1][0][0] == messages.TYPE_HANDSHAKE_RESP
        assert answered == constants.RATELIMIT_BURST, sources[0]
        assert gateway.counters["drop-ratelimit"] == len(sources) - constants.RATELIMIT_BURST


# ---------------------------------------------------------------- corrupted handshakes


def _handshake_to_message3(gateway: GatewayProtocol, gateway_key: KeyPair, addr: Addr) -> InitiatorHandshake:
    """A client's handshake that has read message 2 and not yet written message 3."""
    client_key = KeyPair.generate()
    hs = InitiatorHandshake(client_key, gateway_key.public, 7, CookieGenerator(gateway_key.public), 0.0)
    gateway.receive_datagram(hs.init_message, addr, 0.0)
    hs.read_response(messages.HandshakeResp.decode(gateway.datagrams_to_send()[0][0]))
    return hs


def test_a_bit_flip_in_message_3_does_not_spoil_the_genuine_one() -> None:
    gateway_key, addr = KeyPair.generate(), Addr("192.0.2.1", 1)
    gateway = GatewayProtocol(gateway_key, AcceptAll())
    hs = _handshake_to_message3(gateway, gateway_key, addr)
    final, _ = hs.write_final(FinalPayload(b"ok:" + hs._hs.s.public))  # type: ignore[union-attr]
    for byte in (10, 60, len(final) - 1):  # in s, in the payload, in the tag
        flipped = bytearray(final)
        flipped[byte] ^= 1
        assert gateway.receive_datagram(bytes(flipped), addr, 0.1) is None
    assert gateway.counters["drop-decrypt"] == 3
    gateway.receive_datagram(final, addr, 0.1)
    assert len(gateway.sessions) == 1


def test_message_3_with_malformed_options_leaves_the_handshake_for_the_genuine_one() -> None:
    """Only the client can make these (a valid Noise part needs its keys), but a buggy or hostile
    client must not be able to wedge its pending handshake, nor make the gateway raise."""
    gateway_key, addr = KeyPair.generate(), Addr("192.0.2.1", 1)
    gateway = GatewayProtocol(gateway_key, AcceptAll())
    hs = _handshake_to_message3(gateway, gateway_key, addr)
    for junk in (b"\x01\xff\xff", b"\x07\x00\x00", b"", b"\x02\x00\x01x"):
        forged = messages.HandshakeFinal(hs.remote_index, hs._hs.copy().write_message(junk)).encode()
        assert gateway.receive_datagram(forged, addr, 0.1) is None
        assert gateway.receive_datagram(forged, addr, 0.1) is None  # and again, as a resend
    assert gateway.counters["drop-malformed"] == 8
    assert gateway.pending_handshakes == 1
    final, _ = hs.write_final(FinalPayload(b"ok:" + hs._hs.s.public))  # type: ignore[union-attr]
    gateway.receive_datagram(final, addr, 0.1)
    assert len(gateway.sessions) == 1 and gateway.pending_handshakes == 0


def test_a_forged_message_2_does_not_spoil_the_genuine_one() -> None:
    gateway_key, addr = KeyPair.generate(), Addr("192.0.2.1", 1)
    gateway = GatewayProtocol(gateway_key, AcceptAll())
    hs = InitiatorHandshake(
        KeyPair.generate(), gateway_key.public, 7, CookieGenerator(gateway_key.public), 0.0
    )
    gateway.receive_datagram(hs.init_message, addr, 0.0)
    resp = gateway.datagrams_to_send()[0][0]
    flipped = bytearray(resp)
    flipped[-1] ^= 1
    with pytest.raises(RemoteProtocolError):
        hs.read_response(messages.HandshakeResp.decode(bytes(flipped)))
    hs.read_response(messages.HandshakeResp.decode(resp))
    final, _ = hs.write_final(FinalPayload(b"ok:" + hs._hs.s.public))  # type: ignore[union-attr]
    gateway.receive_datagram(final, addr, 0.1)
    assert len(gateway.sessions) == 1


# ---------------------------------------------------------------- malformed data from a live session


def test_short_transport_datagrams_are_dropped_by_the_client() -> None:
    net = Net()
    net.connect()
    for n in range(4, messages.TRANSPORT_MIN_LEN):
        data = messages.HDR_TRANSPORT + bytes(n - 4)
        assert net.client.receive_datagram(data, net.now) is None
        assert net.gateway.receive_datagram(data, net.addr, net.now) is None
    assert net.client.counters["drop-length"] == messages.TRANSPORT_MIN_LEN - 4
    assert net.gateway.counters["drop-length"] == messages.TRANSPORT_MIN_LEN - 4


def test_an_authenticated_packet_with_a_bad_ip_length_is_dropped() -> None:
    net = Net()
    net.connect()
    ip = net.client_ip
    good = ipv4_packet(ip, "198.51.100.1", b"x" * 12)
    for length in (0, 1, 19, len(good) + 1, 0xFFFF):
        bad = good[:2] + length.to_bytes(2, "big") + good[4:]
        sealed = net.client.send_packet(bad, net.now)
        assert sealed is not None
        assert net.gateway.receive_datagram(sealed, net.addr, net.now) is None
        session = next(iter(net.gateway.sessions.values()))
        down = net.gateway.send_packet(session, bad[:12] + good[16:20] + good[12:16] + bad[20:], net.now)
        assert down is not None
        assert net.client.receive_datagram(down[0], net.now) is None
    assert net.gateway.counters["drop-not-ip"] == 5
    assert net.client.counters["drop-not-ip"] == 5


# ---------------------------------------------------------------- one session per credential


def _session_for(net: Net) -> int:
    net.connect()
    assert net.client.connected
    return next(iter(net.gateway.sessions))


def test_a_key_rotated_away_from_opens_no_second_session() -> None:
    """Connect with key 1, rotate to key 2, connect again with key 1, rotate, repeat: each round
    used to leave a live session behind, so one credential drained the address pool."""
    gateway_key = KeyPair.generate()
    gateway = GatewayProtocol(gateway_key, AcceptAll())
    first = Net(gateway=gateway, gateway_key=gateway_key)
    _session_for(first)
    key1 = first.client_key
    key2 = KeyPair.generate()
    first.client.rotate_identity(key2, b"ok:" + key2.public, first.now)
    first.run(1)
    assert [e.identity_rotated for e in first.gateway_events if isinstance(e, SessionRekeyed)] == [True]

    again = Net(gateway=gateway, gateway_key=gateway_key, client_key=key1)
    again.addr = Addr("192.0.2.44", 4444)
    again.now = first.now
    again.connect()
    assert not again.client.connected
    assert len(gateway.sessions) == 1
    assert [e.reason for e in again.gateway_events if isinstance(e, HandshakeRefused)] == [
        "credential-in-use"
    ]
    assert gateway.counters["refused-credential-in-use"] >= 1


def test_a_rotation_to_a_key_of_another_live_session_is_refused() -> None:
    gateway_key = KeyPair.generate()
    gateway = GatewayProtocol(gateway_key, AcceptAll())
    a = Net(gateway=gateway, gateway_key=gateway_key)
    _session_for(a)
    b = Net(gateway=gateway, gateway_key=gateway_key)
    b.addr = Addr("192.0.2.45", 4545)
    b.now = a.now
    _session_for(b)
    assert len(gateway.sessions) == 2
    # b takes a's key and credential and rotates its own session to it.
    b.client.rotate_identity(a.client_key, b"ok:" + a.client_key.public, b.now)
    b.run(1)
    assert [e.reason for e in b.gateway_events if isinstance(e, HandshakeRefused)] == ["credential-in-use"]
    assert sorted(s.static_public for s in gateway.sessions.values()) == sorted(
        [a.client_key.public, b.client_key.public]
    )


def test_a_client_that_lost_its_state_reconnects_to_its_session() -> None:
    gateway_key = KeyPair.generate()
    gateway = GatewayProtocol(gateway_key, AcceptAll())
    first = Net(gateway=gateway, gateway_key=gateway_key)
    session_id = _session_for(first)
    restarted = Net(gateway=gateway, gateway_key=gateway_key, client_key=first.client_key)
    restarted.now = first.now + 5
    restarted.connect()
    assert restarted.client.connected
    assert list(gateway.sessions) == [session_id]


def test_the_per_credential_session_limit_is_configurable() -> None:
    gateway_key = KeyPair.generate()
    gateway = GatewayProtocol(gateway_key, AcceptAll(), max_sessions_per_credential=2)
    key = KeyPair.generate()
    nets = []
    for i in range(3):
        net = Net(gateway=gateway, gateway_key=gateway_key, client_key=key)
        net.addr = Addr("192.0.2.50", 5000 + i)
        net.now = 1000.0 + i
        net.connect()
        nets.append(net)
    assert [n.client.connected for n in nets] == [True, True, True]
    # Two sessions hold the key; the third connection resumed one of them instead of opening a third.
    assert len(gateway.sessions) == 2


class DropsFullSize(Link):
    """A path a flood fills: full-size datagrams (handshake initiations) are lost, small ones pass."""

    def carry(self, data: bytes, now: float) -> list[tuple[float, bytes]]:
        return [] if len(data) >= messages.INIT_LEN else super().carry(data, now)


def test_a_rekey_unanswered_on_a_path_that_still_carries_data_is_a_stalled_path() -> None:
    """Under a UDP flood, small packets still pass but the gateway's socket drops most full-size
    ones: the rekey never gets through while data does. The core reports the path stalled for
    handshakes, so the driver moves the rekey (and the session) to TCP."""
    net = Net()
    net.connect()
    assert net.client.connected
    net.up = DropsFullSize()
    ip = net.client_ip
    for _ in range(int(constants.REKEY_AFTER_TIME) + 5):
        net.client_send(ipv4_packet(ip, "198.51.100.1", b"data"))
        net.gateway_send(ipv4_packet("198.51.100.1", ip, b"back"))
        net.run(1.0)
    stalls = [e for e in net.client_events if isinstance(e, PathStalled)]
    assert len(stalls) == 1
    assert stalls[0].silent_for >= net.client.stall_timeout
    assert net.client.connected  # data still flows meanwhile
