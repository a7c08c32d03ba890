"""In-memory client/gateway pairs: handshake, data, rekey, loss, reordering, replay, expiry, cookies."""

from __future__ import annotations

import ipaddress

import pytest

from veilgate.credentials import CredentialVerifier, IssuerKey, issue
from veilgate.protocol import constants, messages
from veilgate.protocol.client import ClientProtocol
from veilgate.protocol.control import TunnelConfig
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.events import (
    ConfigReceived,
    HandshakeCompleted,
    HandshakeRefused,
    PathStalled,
    ProbeAnswered,
    SessionEnded,
    SessionEstablished,
    SessionRekeyed,
)
from veilgate.protocol.gateway import GatewayProtocol

from .harness import AcceptAll, Addr, Link, Net, ipv4_packet, ipv6_packet


def connected_net(**kwargs: object) -> Net:
    net = Net(**kwargs)  # type: ignore[arg-type]
    net.connect()
    assert net.client.connected
    return net


def test_handshake_pushes_config_and_confirms() -> None:
    net = connected_net()
    assert [type(e) for e in net.client_events] == [HandshakeCompleted, ConfigReceived]
    assert [type(e) for e in net.gateway_events] == [SessionEstablished]
    config = net.client.config
    assert config is not None and config.ipv4 is not None and config.ipv6 is not None
    assert config.lease == 3600
    assert net.gateway.counters["handshakes"] == 1


def test_message_sizes_match_the_spec() -> None:
    net = Net()
    net.client.connect(net.now)
    init = net.client.datagrams_to_send()[0]
    assert len(init) == messages.INIT_LEN == 1288
    net.gateway.receive_datagram(init, net.addr, net.now)
    resp = net.gateway.datagrams_to_send()[0][0]
    assert len(resp) == messages.RESP_LEN == 1164
    net.client.receive_datagram(resp, net.now)
    final = net.client.datagrams_to_send()[0]
    assert len(final) == messages.FINAL_MIN_LEN + 3 + len(b"ok:") + 32
    assert messages.decode(final).receiver == messages.HandshakeResp.decode(resp).sender  # type: ignore[union-attr]


def test_data_both_ways_v4_and_v6() -> None:
    net = connected_net()
    ip = net.client_ip
    v6 = str(net.client.config.ipv6.ip)  # type: ignore[union-attr]
    up = [ipv4_packet(ip, "198.51.100.1", bytes([i]) * (i * 13 % 1400)) for i in range(50)]
    up += [ipv6_packet(v6, "2001:db8::1", b"v6" * i) for i in range(10)]
    for p in up:
        net.client_send(p)
    down = [ipv4_packet("198.51.100.1", ip, b"reply%d" % i) for i in range(30)]
    for p in down:
        net.gateway_send(p)
    net.run(1)
    assert net.delivered_to_gateway == up
    assert net.delivered_to_client == down


def test_packets_queued_before_the_handshake_follow_message3() -> None:
    net = Net()
    net.client.connect(net.now)
    early = ipv4_packet("10.201.0.2", "198.51.100.1", b"early")
    assert net.client.send_packet(early, net.now) is None
    init = net.client.datagrams_to_send()[0]
    net.gateway.receive_datagram(init, net.addr, net.now)
    net.client.receive_datagram(net.gateway.datagrams_to_send()[0][0], net.now)
    final, data = net.client.datagrams_to_send()
    assert final[0] == messages.TYPE_HANDSHAKE_FINAL and data[0] == messages.TYPE_TRANSPORT
    net.gateway.receive_datagram(final, net.addr, net.now)
    session = next(iter(net.gateway.sessions.values()))
    # The gateway assigns before the data arrives (same flight on an ordered path).
    net.gateway.assign(session.id, TunnelConfig(ipv4=ipaddress.IPv4Interface("10.201.0.2/16")), net.now)
    assert net.gateway.receive_datagram(data, net.addr, net.now) == early


def test_spoofed_inner_source_is_dropped() -> None:
    net = connected_net()
    net.client_send(ipv4_packet("10.201.0.99", "198.51.100.1", b"spoof"))
    net.run(1)
    assert net.delivered_to_gateway == []
    assert net.gateway.counters["drop-source"] == 1


def test_rekey_under_traffic_loses_nothing() -> None:
    net = connected_net()
    ip = net.client_ip
    sent_up: list[bytes] = []
    sent_down: list[bytes] = []
    for i in range(2000):  # 400 s of traffic at 5 packets/s each way: three rekeys
        p = ipv4_packet(ip, "198.51.100.1", i.to_bytes(4, "big"))
        q = ipv4_packet("198.51.100.1", ip, i.to_bytes(4, "big"))
        sent_up.append(p)
        sent_down.append(q)
        net.client_send(p)
        net.gateway_send(q)
        net.run(0.2)
    net.run(1)
    rekeys = [e for e in net.gateway_events if isinstance(e, SessionRekeyed)]
    assert len(rekeys) >= 3
    assert net.delivered_to_gateway == sent_up
    assert net.delivered_to_client == sent_down
    assert len(net.gateway.sessions) == 1
    completed = [e for e in net.client_events if isinstance(e, HandshakeCompleted)]
    assert completed[0].rekey is False and all(e.rekey for e in completed[1:])


def test_rekey_after_sets_when_the_client_rekeys() -> None:
    net = Net()
    net.client = ClientProtocol(
        net.client_key, net.gateway_key.public, b"ok:" + net.client_key.public, rekey_after=10.0
    )
    net.connect()
    assert net.client.connected
    net.run(9.0)
    assert not [e for e in net.gateway_events if isinstance(e, SessionRekeyed)]
    net.run(2.0)
    assert len([e for e in net.gateway_events if isinstance(e, SessionRekeyed)]) == 1
    net.run(10.0)
    assert len([e for e in net.gateway_events if isinstance(e, SessionRekeyed)]) == 2
    assert net.client.connected and len(net.gateway.sessions) == 1


def test_loss_reordering_and_duplication() -> None:
    rng_up = Link(loss=0.1, duplicate=0.1, reorder=0.2)
    rng_down = Link(loss=0.1, duplicate=0.1, reorder=0.2)
    net = Net(up=rng_up, down=rng_down)
    net.client.connect(net.now)
    net.run(10)
    assert net.client.connected
    ip = net.client_ip
    sent = [ipv4_packet(ip, "198.51.100.1", i.to_bytes(4, "big")) for i in range(500)]
    for p in sent:
        net.client_send(p)
        net.run(0.01)
    net.run(2)
    got = net.delivered_to_gateway
    assert len(got) == len(set(got)), "a duplicate got through the replay window"
    assert set(got) <= set(sent)
    assert 0.75 * len(sent) < len(got) < len(sent)
    assert net.gateway.counters["drop-replay"] > 0


def test_replayed_datagram_is_rejected() -> None:
    net = connected_net()
    d = net.client.send_packet(ipv4_packet(net.client_ip, "198.51.100.1", b"once"), net.now)
    assert d is not None
    assert net.gateway.receive_datagram(d, net.addr, net.now) is not None
    assert net.gateway.receive_datagram(d, net.addr, net.now) is None
    assert net.gateway.counters["drop-replay"] == 1


def test_tampered_datagram_is_rejected_and_session_unharmed() -> None:
    net = connected_net()
    d = net.client.send_packet(ipv4_packet(net.client_ip, "198.51.100.1", b"data"), net.now)
    assert d is not None
    forged = d[:-1] + bytes([d[-1] ^ 1])
    assert net.gateway.receive_datagram(forged, net.addr, net.now) is None
    assert net.gateway.counters["drop-decrypt"] == 1
    assert net.gateway.receive_datagram(d, net.addr, net.now) is not None


def test_unknown_version_is_refused_and_counted() -> None:
    net = connected_net()
    d = net.client.send_packet(ipv4_packet(net.client_ip, "198.51.100.1", b"v"), net.now)
    assert d is not None
    assert net.gateway.receive_datagram(d[:1] + b"\x02" + d[2:], net.addr, net.now) is None
    assert net.gateway.counters["drop-version"] == 1
    assert net.gateway.datagrams_to_send() == []


def test_session_expires_without_rekey_and_ends() -> None:
    net = connected_net()
    # The client vanishes: nothing more arrives at the gateway.
    net.up.blocked = True
    net.run(constants.REJECT_AFTER_TIME + 5)
    ended = [e for e in net.gateway_events if isinstance(e, SessionEnded)]
    assert len(ended) == 1 and ended[0].reason == "expired"
    assert net.gateway.sessions == {}


def test_client_close_ends_session_at_once() -> None:
    net = connected_net()
    d = net.client.close(net.now)
    assert d is not None
    net.gateway.receive_datagram(d, net.addr, net.now)
    assert net.gateway.sessions == {}
    assert isinstance(net.gateway.next_event(), SessionEnded)


def test_expired_keypair_refuses_to_send() -> None:
    net = connected_net()
    net.down.blocked = True
    net.up.blocked = True
    net.run(constants.REJECT_AFTER_TIME + 1)
    assert net.client.send_packet(ipv4_packet(net.client_ip, "198.51.100.1", b"x"), net.now) is None
    assert not net.client.connected


def test_wrong_gateway_key_never_completes() -> None:
    net = Net(pinned_gateway_key=KeyPair.generate().public)
    net.client.connect(net.now)
    net.run(20)
    assert not net.client.connected
    assert net.gateway.counters["drop-mac1"] >= 3
    assert net.gateway.counters["handshake-responses"] == 0


def test_refused_credential_creates_no_session_and_says_why() -> None:
    net = Net(credential=b"ok:" + bytes(32))  # certifies another key
    net.client.connect(net.now)
    net.run(3)
    assert not net.client.connected
    assert net.gateway.sessions == {}
    refused = [e for e in net.gateway_events if isinstance(e, HandshakeRefused)]
    assert refused and refused[0].reason == "forged"


def test_repeated_message3_is_confirmed_again() -> None:
    # The confirmation (config) is lost: the client sends message 3 again and gets it.
    net = Net()
    net.down.loss = 0.0
    net.client.connect(net.now)
    net.flush()
    init = net.in_flight.pop()[3]
    net.gateway.receive_datagram(init, net.addr, net.now)
    resp = net.gateway.datagrams_to_send()[0][0]
    net.client.receive_datagram(resp, net.now)
    final = net.client.datagrams_to_send()[0]
    net.gateway.receive_datagram(final, net.addr, net.now)
    net.flush()  # assigns; the config is queued on the downlink
    net.in_flight.clear()  # ... and lost
    assert not net.client.connected
    net.run(constants.CONFIRM_RETRY + 0.5)
    assert net.client.connected
    assert len(net.gateway.sessions) == 1


def test_cookie_mode_under_load() -> None:
    gateway_key = KeyPair.generate()
    gateway = GatewayProtocol(gateway_key, AcceptAll(), under_load_rate=5)
    # Flood from other sources first (valid mac1, as an attacker who knows the public key can make).
    flood = Net(gateway=gateway, gateway_key=gateway_key)
    flood.client.connect(flood.now)
    init = flood.client.datagrams_to_send()[0]
    for i in range(50):
        gateway.receive_datagram(init, Addr("203.0.113.5", 1000 + i), flood.now)
    replies = gateway.datagrams_to_send()
    cookie_replies = [d for d, _ in replies if d[0] == messages.TYPE_COOKIE_REPLY]
    assert cookie_replies, "the gateway should demand cookies under load"
    assert gateway.pending_handshakes < 50
    # A legitimate client in the same second gets a cookie reply, retries with mac2 and connects.
    net = Net(gateway=gateway, gateway_key=gateway_key)
    net.now = flood.now
    net.client.connect(net.now)
    net.run(3)
    assert net.client.connected
    assert net.client.counters["cookie-replies"] >= 1
    assert gateway.counters["cookie-sent"] >= 1


def test_ratelimit_per_source_under_load() -> None:
    gateway_key = KeyPair.generate()
    gateway = GatewayProtocol(gateway_key, AcceptAll())
    gateway.force_under_load = True
    net = Net(gateway=gateway, gateway_key=gateway_key)
    net.connect()  # gets a cookie, then connects
    assert net.client.connected
    # Now one source replays valid initiations with a valid mac2 very fast.
    hs_msg = None
    net.client.rotate_identity(net.client_key, b"ok:" + net.client_key.public, net.now)
    hs_msg = net.client.handshake_message()
    assert hs_msg is not None
    before = gateway.counters["handshake-responses"]
    for _ in range(100):
        gateway.receive_datagram(hs_msg, net.addr, net.now)
    answered = gateway.counters["handshake-responses"] - before
    assert answered <= constants.RATELIMIT_BURST
    assert gateway.counters["drop-ratelimit"] >= 90


def test_pending_handshakes_are_bounded_and_expire() -> None:
    gateway_key = KeyPair.generate()
    gateway = GatewayProtocol(gateway_key, AcceptAll(), max_pending=10)
    net = Net(gateway=gateway, gateway_key=gateway_key)
    net.client.connect(net.now)
    init = net.client.datagrams_to_send()[0]
    for i in range(30):
        gateway.receive_datagram(init, Addr("203.0.113.7", i + 1), net.now)
    # Initiations without a cookie fill an eighth of the table; then cookies are demanded.
    assert gateway.pending_handshakes == 10 // 8
    assert gateway.counters["cookie-sent"] == 30 - 10 // 8
    t = gateway.get_timer()
    assert t is not None
    gateway.handle_timer(t + 0.01)
    assert gateway.pending_handshakes == 0


def test_probe_is_answered_without_roaming() -> None:
    net = connected_net()
    probe = net.client.send_probe(net.now)
    assert probe is not None
    probe_id, datagram = probe
    other = Addr("192.0.2.99", 5555)
    net.gateway.receive_datagram(datagram, other, net.now)
    out = net.gateway.datagrams_to_send()
    assert len(out) == 1 and out[0][1] == other
    session = next(iter(net.gateway.sessions.values()))
    assert session.endpoint == net.addr
    net.client.receive_datagram(out[0][0], net.now)
    assert ProbeAnswered(probe_id) in [net.client.next_event() for _ in range(5)]


def test_gateway_roams_on_authenticated_data_only() -> None:
    net = connected_net()
    session = next(iter(net.gateway.sessions.values()))
    new = Addr("192.0.2.77", 6000)
    d = net.client.send_packet(ipv4_packet(net.client_ip, "198.51.100.1", b"x"), net.now)
    assert d is not None
    forged = d[:-1] + bytes([d[-1] ^ 1])
    net.gateway.receive_datagram(forged, new, net.now)
    assert session.endpoint == net.addr
    net.gateway.receive_datagram(d, new, net.now)
    assert session.endpoint == new


def test_stalled_path_is_reported() -> None:
    net = connected_net()
    net.down.blocked = True
    net.client_send(ipv4_packet(net.client_ip, "198.51.100.1", b"x"))
    net.run(constants.STALL_TIMEOUT + 0.5)
    assert any(isinstance(e, PathStalled) for e in net.client_events)
    net.down.blocked = False
    net.run(3)
    assert net.client.connected


def test_gateway_restart_client_reconnects() -> None:
    net = connected_net()
    first_ip = net.client_ip
    # The gateway process restarts: same key, no memory.
    net.gateway = GatewayProtocol(net.gateway_key, AcceptAll())
    net.client_send(ipv4_packet(first_ip, "198.51.100.1", b"lost"))
    net.run(constants.STALL_TIMEOUT + 3)
    assert len(net.gateway.sessions) == 1
    assert net.client.connected
    net.client_send(ipv4_packet(net.client_ip, "198.51.100.1", b"after"))
    net.run(1)
    assert net.delivered_to_gateway[-1].endswith(b"after")


def test_identity_rotation_keeps_the_session() -> None:
    net = connected_net()
    ip = net.client_ip
    session_id = next(iter(net.gateway.sessions))
    new_key = KeyPair.generate()
    net.client.rotate_identity(new_key, b"ok:" + new_key.public, net.now)
    net.run(2)
    rekeyed = [e for e in net.gateway_events if isinstance(e, SessionRekeyed)]
    assert rekeyed and rekeyed[-1].identity_rotated
    assert list(net.gateway.sessions) == [session_id]
    assert net.gateway.sessions[session_id].static_public == new_key.public
    assert net.client_ip == ip
    net.client_send(ipv4_packet(ip, "198.51.100.1", b"still here"))
    net.run(1)
    assert net.delivered_to_gateway[-1].endswith(b"still here")


def test_many_sessions_are_routed_by_index() -> None:
    gateway_key = KeyPair.generate()
    gateway = GatewayProtocol(gateway_key, AcceptAll())
    nets = []
    for i in range(20):
        net = Net(gateway=gateway, gateway_key=gateway_key)
        net.addr = Addr(f"192.0.2.{i + 1}", 40000 + i)
        net.next_ip = 10 + i
        nets.append(net)
    for net in nets:
        net.client.connect(net.now)
        # Each harness reads only its own datagrams: drive them one at a time.
        net.run(0.5)
        assert net.client.connected
    assert len(gateway.sessions) == 20
    for net in nets:
        d = net.client.send_packet(
            ipv4_packet(net.client_ip, "198.51.100.1", net.client_ip.encode()), net.now
        )
        assert d is not None
        out = gateway.receive_datagram(d, net.addr, net.now)
        assert out is not None and out.endswith(net.client_ip.encode())


def test_keepalive_keeps_idle_session_alive() -> None:
    net = connected_net()
    net.run(600)
    assert len(net.gateway.sessions) == 1
    assert net.client.connected
    assert not any(isinstance(e, SessionEnded) for e in net.gateway_events)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1420])
def test_padding_to_16(size: int) -> None:
    net = connected_net()
    packet = ipv4_packet(net.client_ip, "198.51.100.1", bytes(max(0, size - 20)))
    d = net.client.send_packet(packet, net.now)
    assert d is not None
    assert (len(d) - messages.TRANSPORT_MIN_LEN) % 16 == 0
    assert net.gateway.receive_datagram(d, net.addr, net.now) == packet


class _WallClock:
    """The daemons pass wall-clock time to the verifier; here the harness clock is used as wall clock."""

    def __init__(self, verifier: object) -> None:
        self.verifier = verifier

    def verify(self, data: bytes, static_public: bytes, now: float) -> object:
        return self.verifier.verify(data, static_public, now)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "case", ["valid", "forged", "expired", "not-yet-valid", "unknown-issuer", "wrong-key", "malformed"]
)
def test_real_credentials_through_the_handshake(case: str) -> None:
    issuer = IssuerKey.generate()
    gateway_key = KeyPair.generate()
    client_key = KeyPair.generate()
    gateway = GatewayProtocol(gateway_key, _WallClock(CredentialVerifier([issuer.public_key()])))
    now = 1_750_000_000.0
    cred = issue(issuer, client_key.public, now, granularity=1).encode()
    if case == "forged":
        cred = cred[:-1] + bytes([cred[-1] ^ 0x80])
    elif case == "expired":
        cred = issue(issuer, client_key.public, now - 100_000, lifetime=3600, granularity=1).encode()
    elif case == "not-yet-valid":
        cred = issue(issuer, client_key.public, now + 100_000, granularity=1).encode()
    elif case == "unknown-issuer":
        cred = issue(IssuerKey.generate(), client_key.public, now, granularity=1).encode()
    elif case == "wrong-key":
        cred = issue(issuer, KeyPair.generate().public, now, granularity=1).encode()
    elif case == "malformed":
        cred = b"\x01\x01garbage"
    net = Net(gateway=gateway, gateway_key=gateway_key, client_key=client_key, credential=cred)
    net.now = now
    net.client.connect(net.now)
    net.run(2)
    if case == "valid":
        assert net.client.connected and len(gateway.sessions) == 1
        return
    assert not net.client.connected and gateway.sessions == {}
    refused = [e for e in net.gateway_events if isinstance(e, HandshakeRefused)]
    assert refused and refused[0].reason == case
    assert gateway.counters[f"refused-{case}"] >= 1
