"""The keypair rule (``Keypair.state``) and the places that follow it."""

from __future__ import annotations

import pytest

from veilgate import fastpath
from veilgate.fastpath.keypair import CompiledKeypair
from veilgate.protocol.constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES
from veilgate.protocol.keypair import EXPIRED, REKEY, USABLE, Keypair, KeypairFactory

from .harness import Net, ipv4_packet

K1, K2 = bytes(range(32)), bytes(range(32, 64))
FACTORIES: list[KeypairFactory] = [Keypair, CompiledKeypair] if fastpath.BUILT else [Keypair]


@pytest.mark.parametrize("factory", FACTORIES)
def test_the_rule(factory: KeypairFactory) -> None:
    kp = factory(K1, K2, 1, 2, 100.0, True)
    assert kp.state(100.0) is USABLE
    assert kp.state(100.0 + REJECT_AFTER_TIME - 0.001) is USABLE
    assert kp.state(100.0 + REJECT_AFTER_TIME) is EXPIRED
    assert kp.expires_at == 100.0 + REJECT_AFTER_TIME
    kp.send_counter = REKEY_AFTER_MESSAGES - 1
    assert kp.state(100.0) is USABLE
    kp.send_counter = REKEY_AFTER_MESSAGES
    assert kp.state(100.0) is REKEY
    assert kp.state(100.0 + REJECT_AFTER_TIME) is EXPIRED  # age wins
    kp.send_counter = REJECT_AFTER_MESSAGES - 1
    assert kp.state(100.0) is REKEY
    kp.send_counter = REJECT_AFTER_MESSAGES
    assert kp.state(100.0) is EXPIRED


def connected() -> Net:
    net = Net()
    net.connect()
    assert net.client.connected
    return net


def test_the_client_rekeys_on_the_packet_that_reaches_the_rekey_counter() -> None:
    net = connected()
    kp = net.client.current
    assert kp is not None
    packet = ipv4_packet(net.client_ip, "198.51.100.1", b"x")
    kp.send_counter = REKEY_AFTER_MESSAGES - 2
    assert net.client.send_packet(packet, net.now) is not None
    assert net.client.handshake_message() is None
    assert net.client.send_packet(packet, net.now) is not None  # counter now REKEY_AFTER_MESSAGES
    assert net.client.handshake_message() is not None


def test_a_keypair_expired_by_its_counter_sends_nothing_and_the_client_receives_nothing() -> None:
    net = connected()
    client_kp, session = net.client.current, next(iter(net.gateway.sessions.values()))
    gateway_kp = session.current
    assert client_kp is not None and gateway_kp is not None
    up = ipv4_packet(net.client_ip, "198.51.100.1", b"up")
    to_gateway = client_kp.seal(up)
    to_client = gateway_kp.seal(ipv4_packet("198.51.100.1", net.client_ip, b"down"))
    gateway_kp.send_counter = REJECT_AFTER_MESSAGES
    assert net.gateway.send_packet(session, up, net.now) is None
    assert net.gateway.counters["tx-no-keypair"] == 1
    # The gateway's data path refuses by age only (its inlined copy of the rule).
    assert net.gateway.receive_datagram(to_gateway, net.addr, net.now) == up
    client_kp.send_counter = REJECT_AFTER_MESSAGES
    assert net.client.send_keepalive(net.now) is None
    assert net.client.receive_datagram(to_client, net.now) is None
    assert net.client.counters["drop-expired"] == 1


def test_the_gateways_data_path_refuses_a_keypair_by_age() -> None:
    net = connected()
    client_kp, session = net.client.current, next(iter(net.gateway.sessions.values()))
    gateway_kp = session.current
    assert client_kp is not None and gateway_kp is not None
    first, second = (client_kp.seal(ipv4_packet(net.client_ip, "198.51.100.1", b"x")) for _ in range(2))
    expiry = gateway_kp.created + REJECT_AFTER_TIME
    assert net.gateway.receive_datagram(first, net.addr, expiry - 0.001) is not None
    assert net.gateway.receive_datagram(second, net.addr, expiry + 0.001) is None
    assert net.gateway.counters["drop-expired"] == 1
