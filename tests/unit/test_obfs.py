"""Obfuscation of the wire format (docs/protocol.md 14): round trips, what an observer sees, and
bad input dropped and counted. Both keypair kinds (pure Python and compiled) are run, and each
opens what the other sealed."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.harness import Net, ipv4_packet
from veilgate import fastpath
from veilgate.protocol import messages
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.keypair import Keypair, KeypairFactory
from veilgate.protocol.obfs import HS_WIRE_MAX, Obfuscation, counter_key

FACTORIES: list[KeypairFactory] = [Keypair]
if fastpath.BUILT:
    from veilgate.fastpath.keypair import CompiledKeypair

    FACTORIES.append(CompiledKeypair)

K1, K2 = bytes(range(32)), bytes(range(32, 64))
GW = KeyPair.generate()


_Carry = Callable[[bytes, float], list[tuple[float, bytes]]]


def capture(net: Net) -> tuple[list[bytes], list[bytes]]:
    """Record every datagram on the wire, both ways."""
    up: list[bytes] = []
    down: list[bytes] = []
    carry_up, carry_down = net.up.carry, net.down.carry

    def rec(log: list[bytes], carry: _Carry) -> _Carry:
        def f(data: bytes, now: float) -> list[tuple[float, bytes]]:
            log.append(data)
            return carry(data, now)

        return f

    net.up.carry = rec(up, carry_up)  # type: ignore[method-assign,assignment]
    net.down.carry = rec(down, carry_down)  # type: ignore[method-assign,assignment]
    return up, down


def session(factory: KeypairFactory) -> tuple[Net, list[bytes], list[bytes]]:
    net = Net(obfuscation=True, keypair=factory)
    up, down = capture(net)
    net.connect()
    assert net.client.connected
    return net, up, down


@pytest.mark.parametrize("factory", FACTORIES)
def test_traffic_passes_both_ways_and_nothing_fixed_shows(factory: KeypairFactory) -> None:
    net, up, down = session(factory)
    for i in range(40):
        net.client_send(ipv4_packet(net.client_ip, "198.51.100.1", bytes([i]) * 30))
        net.gateway_send(ipv4_packet("198.51.100.1", net.client_ip, bytes([i]) * 30))
    net.run(0.5)
    assert len(net.delivered_to_gateway) == 40 and len(net.delivered_to_client) == 40
    for wire in (up, down):
        assert len(wire) > 40
        # No byte of the first 16 is the same in every datagram (type, version, index, counter).
        for offset in range(16):
            assert len({d[offset] for d in wire}) > 1, offset
        # Consecutive datagrams share no fixed pattern: their XOR is not constant.
        xors = {
            bytes(a ^ b for a, b in zip(x[:16], y[:16], strict=True)) for x, y in itertools.pairwise(wire)
        }
        assert len(xors) == len(wire) - 1
        assert not any(d[:4] == messages.HDR_TRANSPORT for d in wire)
    assert net.gateway.counters["drop-obfs"] == 0 and net.client.counters["drop-obfs"] == 0


def test_counters_are_hidden_from_whoever_has_the_gateway_key() -> None:
    net, up, _ = session(Keypair)
    obfs = Obfuscation(net.gateway_key.public)
    for i in range(20):
        net.client_send(ipv4_packet(net.client_ip, "198.51.100.1", bytes([i]) * 30))
    net.run(0.1)
    transport = [d for d in up if obfs.unmask_head(d) is not None]
    assert len(transport) >= 20
    # The gateway-wide key opens type and index; the counter bytes still look random.
    counters = [int.from_bytes(d[8:16], "little") for d in transport]
    assert counters != sorted(counters)
    assert max(counters) > 2**40


def test_handshake_sizes_vary_and_mac1_still_holds() -> None:
    sizes = set()
    for _ in range(6):
        net = Net(obfuscation=True)
        up, down = capture(net)
        net.connect()
        assert net.client.connected
        sizes.add((len(up[0]), len(down[0]), len(up[1])))
        assert all(len(d) <= HS_WIRE_MAX for d in up[:2] + down[:1])
    assert (
        len({s[0] for s in sizes}) > 2 and len({s[1] for s in sizes}) > 2 and len({s[2] for s in sizes}) > 2
    )
    assert net.gateway.counters["handshakes"] == 1


def test_a_wrapped_message_round_trips_and_padding_varies() -> None:
    obfs = Obfuscation(GW.public)
    msg = bytes(range(256)) * 4
    wrapped = {obfs.wrap(msg) for _ in range(20)}
    assert len({len(w) for w in wrapped}) > 5
    assert all(obfs.unwrap(w) == msg for w in wrapped)
    assert Obfuscation(KeyPair.generate().public).unwrap(next(iter(wrapped))) != msg


@pytest.mark.parametrize("seal", FACTORIES)
@pytest.mark.parametrize("open_", FACTORIES)
def test_python_and_compiled_keypairs_open_each_others_protected_datagrams(
    seal: KeypairFactory, open_: KeypairFactory
) -> None:
    obfs = Obfuscation(GW.public)
    a = seal(K1, K2, 1, 2, 0.0, True)
    b = open_(K2, K1, 2, 1, 0.0, False)
    a.protect(obfs.header_key, K1, K2)
    b.protect(obfs.header_key, K2, K1)
    for i, payload in enumerate((b"", b"x" * 17, b"\x45" + b"y" * 1300)):
        d = a.seal(payload)
        head = obfs.unmask_head(d)
        assert head is not None and int.from_bytes(head[4:8], "little") == 2
        counter = b.unmask_counter(d)
        assert counter == i
        plain = head + counter.to_bytes(8, "little") + d[16:]
        assert b.open(plain, counter).rstrip(b"\0") == payload.rstrip(b"\0")


def test_counter_keys_differ_per_direction_and_session() -> None:
    assert counter_key(K1) != counter_key(K2)
    assert len(counter_key(K1)) == 16


@pytest.mark.parametrize("factory", FACTORIES)
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=1500))
def test_garbage_is_dropped_and_counted_never_raised(factory: KeypairFactory, data: bytes) -> None:
    net = _NETS.get(factory)
    if net is None:
        net = _NETS[factory] = session(factory)[0]
    before_g = sum(net.gateway.counters.values())
    before_c = sum(net.client.counters.values())
    assert net.gateway.receive_datagram(data, net.addr, net.now) is None
    assert net.client.receive_datagram(data, net.now) is None
    assert sum(net.gateway.counters.values()) == before_g + 1
    assert sum(net.client.counters.values()) == before_c + 1


_NETS: dict[KeypairFactory, Net] = {}


@pytest.mark.parametrize("factory", FACTORIES)
def test_bit_flips_of_real_datagrams_are_dropped_and_counted(factory: KeypairFactory) -> None:
    net, up, _ = session(factory)
    net.client_send(ipv4_packet(net.client_ip, "198.51.100.1", b"z" * 40))
    net.run(0.1)
    for d in up:
        for pos in (0, 5, 9, 15, 16, 20, len(d) - 1):
            bad = bytearray(d)
            bad[pos] ^= 0x40
            before = sum(net.gateway.counters.values())
            assert net.gateway.receive_datagram(bytes(bad), net.addr, net.now) is None
            assert sum(net.gateway.counters.values()) >= before


def test_a_plain_client_cannot_talk_to_an_obfuscated_gateway() -> None:
    net = Net(obfuscation=True)
    plain = Net(gateway=net.gateway, gateway_key=net.gateway_key)
    plain.connect()
    assert not plain.client.connected
    # Mostly "obfs"; now and then a plain message unwraps to garbage and is dropped for that.
    assert sum(v for k, v in net.gateway.counters.items() if k.startswith("drop-")) >= 1
    assert net.gateway.counters["handshake-responses"] == 0


def test_off_by_default_the_wire_is_unchanged() -> None:
    net = Net()
    up, _ = capture(net)
    net.connect()
    assert up[0][:4] == messages.HDR_INIT and len(up[0]) == messages.INIT_LEN


# ---------------------------------------------------------------------- the compiled loops


@pytest.mark.skipif(not fastpath.BUILT, reason="the compiled data path is not built")
def test_compiled_client_loops_speak_the_protected_format() -> None:
    from tests.unit.test_fastpath import ClientRig, ipv4, serve, settle  # noqa: PLC0415

    obfs = Obfuscation(GW.public)
    rig = ClientRig()
    try:
        rig.path.protect(obfs.header_key)
        rig.mine.protect(obfs.header_key, K1, K2)
        rig.gateway.protect(obfs.header_key, K2, K1)
        rig.path.set_keys(rig.mine.keys, (rig.mine.keys,))
        # TUN -> UDP: sealed and protected in C, opened by the pure-Python keypair.
        sent = []
        for i in range(3):
            packet = ipv4("10.0.0.2", "10.9.9.9", bytes([i]) * 40)
            rig.host.send(packet)
            sent.append(packet)
        serve(rig.path.tun_ready)
        settle()
        for i, packet in enumerate(sent):
            d = rig.gw.recv(2000)
            head = obfs.unmask_head(d)
            assert head is not None and d[:4] != messages.HDR_TRANSPORT
            counter = rig.gateway.unmask_counter(d)
            assert counter == i
            assert (
                rig.gateway.open(head + counter.to_bytes(8, "little") + d[16:], counter)[: len(packet)]
                == packet
            )
        # UDP -> TUN: protected by the pure-Python keypair, opened in C.
        reply = ipv4("10.9.9.9", "10.0.0.2", b"back" * 10)
        rig.gateway_sends(reply)
        settle()
        serve(rig.path.udp_ready)
        assert rig.host.recv(2000) == reply
        # Garbage and an unprotected datagram go to Python untouched; a forgery is counted.
        rig.gw.send(b"\x05\x01\x00\x00" + bytes(60))
        forged = bytearray(rig.gateway.seal(reply))
        forged[-1] ^= 1
        rig.gw.send(bytes(forged))
        settle()
        serve(rig.path.udp_ready)
        pending, _ = rig.path.take()
        assert [p.kind for p in pending] == [fastpath.PENDING_DATAGRAM]
        assert rig.path.counters()["drop-decrypt"] == 1
        with pytest.raises(BlockingIOError):
            rig.host.recv(2000)
    finally:
        rig.close()
