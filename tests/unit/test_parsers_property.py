"""Property tests: every parser turns arbitrary bytes into a valid object or a typed protocol error.

And the protocol objects never raise on input from the network: they count and drop.
"""

from __future__ import annotations

import contextlib
import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veilgate.protocol import control, messages
from veilgate.protocol.control import TunnelConfig
from veilgate.protocol.errors import RemoteProtocolError
from veilgate.protocol.handshake import FinalPayload

from .harness import Net, ipv4_packet

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SIZES = {
    messages.TYPE_HANDSHAKE_INIT: messages.INIT_LEN,
    messages.TYPE_HANDSHAKE_RESP: messages.RESP_LEN,
    messages.TYPE_HANDSHAKE_FINAL: messages.FINAL_MIN_LEN + 20,
    messages.TYPE_COOKIE_REPLY: messages.COOKIE_REPLY_LEN,
    messages.TYPE_TRANSPORT: messages.TRANSPORT_MIN_LEN + 32,
}


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes, or a valid header of a known type with the right length and junk behind it."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=1500))
    msg_type = draw(st.sampled_from(sorted(SIZES)))
    n = SIZES[msg_type] + draw(st.sampled_from([0, 0, 0, -1, 1]))
    body = draw(st.binary(min_size=max(0, n - 4), max_size=max(0, n - 4)))
    return messages.header(msg_type) + body


@FAST
@given(datagrams())
def test_decode_returns_a_message_or_a_typed_error(data: bytes) -> None:
    try:
        msg = messages.decode(data)
    except RemoteProtocolError:
        return
    assert msg.encode() == data


@FAST
@given(st.binary(max_size=400))
def test_control_parsers(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        msg = control.decode_control(data)
        assert msg.encode() == data[: 4 + len(msg.body)]
    with contextlib.suppress(RemoteProtocolError):
        TunnelConfig.decode_body(data)
    with contextlib.suppress(RemoteProtocolError):
        FinalPayload.decode(data)


ipv4_ifaces = st.builds(
    lambda a, p: ipaddress.IPv4Interface((a, p)),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=32),
)
ipv6_ifaces = st.builds(
    lambda a, p: ipaddress.IPv6Interface((a, p)),
    st.integers(min_value=0, max_value=2**128 - 1),
    st.integers(min_value=0, max_value=128),
)
networks = st.one_of(
    ipv4_ifaces.map(lambda i: i.network),
    ipv6_ifaces.map(lambda i: i.network),
)
addresses = st.one_of(ipv4_ifaces.map(lambda i: i.ip), ipv6_ifaces.map(lambda i: i.ip))


@FAST
@given(
    st.one_of(st.none(), ipv4_ifaces),
    st.one_of(st.none(), ipv6_ifaces),
    st.lists(addresses, max_size=4),
    st.lists(networks, max_size=6),
    st.integers(min_value=576, max_value=65535),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=65535),
)
def test_tunnel_config_round_trip(
    v4: ipaddress.IPv4Interface | None,
    v6: ipaddress.IPv6Interface | None,
    dns: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    routes: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    mtu: int,
    lease: int,
    keepalive: int,
) -> None:
    config = TunnelConfig(v4, v6, tuple(dns), tuple(routes), mtu, lease, keepalive)
    wire = control.config_message(config)
    assert TunnelConfig.decode_body(control.decode_control(wire + bytes(7)).body) == config


@FAST
@given(st.binary(max_size=700), st.binary(min_size=32, max_size=32))
def test_final_payload_round_trip(credential: bytes, token: bytes) -> None:
    for resume in (None, token):
        payload = FinalPayload(credential, resume)
        assert FinalPayload.decode(payload.encode()) == payload


def _connected() -> Net:
    net = Net()
    net.connect()
    assert net.client.connected
    return net


NET = _connected()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(datagrams(), min_size=1, max_size=20))
def test_endpoints_never_raise_and_live_sessions_survive(barrage: list[bytes]) -> None:
    net = NET
    for data in barrage:
        assert net.gateway.receive_datagram(data, net.addr, net.now) is None
        assert net.client.receive_datagram(data, net.now) is None
    packet = ipv4_packet(net.client_ip, "198.51.100.1", b"still alive")
    d = net.client.send_packet(packet, net.now)
    assert d is not None
    assert net.gateway.receive_datagram(d, net.addr, net.now) == packet
    assert len(net.gateway.sessions) == 1
