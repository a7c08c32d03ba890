"""The rule: every ``receive_*`` entry point of the sans-IO core, on any bytes, returns or counts a drop.

Hypothesis feeds each entry point arbitrary bytes and mutations of valid messages: all three
handshake messages, the cookie reply, transport messages, control messages sealed with the
session's real keys, and credentials of both kinds inside a real message 3. Nothing may raise,
and the live session must work afterwards.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veilgate.credentials import CredentialVerifier, IssuerKey, issue
from veilgate.credentials.blindrsa import BlindRSAPrivateKey
from veilgate.credentials.epochs import (
    DEFAULT_EPOCH_LENGTH,
    AnyCredentialVerifier,
    CredentialRequest,
    EpochKey,
    EpochVerifier,
    epoch_of,
    sign_blinded,
)
from veilgate.protocol import control, messages
from veilgate.protocol.client import ClientProtocol
from veilgate.protocol.cookie import CookieGenerator, mac1_key
from veilgate.protocol.crypto import KeyPair, mac
from veilgate.protocol.gateway import GatewayProtocol
from veilgate.protocol.handshake import InitiatorHandshake
from veilgate.protocol.messages import INIT_MAC1_OFFSET

from .harness import Addr, Net, ipv4_packet

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))

COVERED = {
    ClientProtocol: {"receive_datagram", "receive_opened"},
    GatewayProtocol: {"receive_datagram", "receive_opened"},
}


def test_every_receive_entry_point_is_covered_here() -> None:
    """A new ``receive_*`` method of the core must join the properties below."""
    for cls, covered in COVERED.items():
        found = {
            name for name, _ in inspect.getmembers(cls, inspect.isfunction) if name.startswith("receive")
        }
        assert found == covered, cls.__name__


@st.composite
def mutations(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few bit flips, byte changes, cuts, insertions and junk tails."""
    data = bytearray(base)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "tail", "drop"]))
        pos = draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(min_value=0, max_value=255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "tail":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "drop" and data:
            del data[pos : pos + draw(st.integers(min_value=1, max_value=16))]
    return bytes(data)


def _restamp_mac1(data: bytes, gateway_public: bytes) -> bytes:
    """A mutated message 1 with a valid mac1 again, as an attacker who knows the public key makes it."""
    if len(data) != messages.INIT_LEN:
        return data
    body = data[:INIT_MAC1_OFFSET]
    return body + mac(mac1_key(gateway_public), body) + data[INIT_MAC1_OFFSET + 16 :]


class Scene:
    """A gateway with a live session, and valid messages of every kind to mutate."""

    def __init__(self) -> None:
        self.net = Net()
        self.net.connect()
        assert self.net.client.connected
        net = self.net
        self.gateway_public = net.gateway_key.public
        self.session = next(iter(net.gateway.sessions.values()))
        assert self.session.current is not None
        self.index = self.session.current.local_index
        # Messages 1 and 3 of another client's handshake, message 2 and a cookie reply for it.
        probe = ClientProtocol(KeyPair.generate(), self.gateway_public, b"ok:x")
        probe.connect(net.now)
        self.init = probe.datagrams_to_send()[0]
        self.resp = self._answer(self.init)
        probe.receive_datagram(self.resp, net.now)
        self.final = probe.datagrams_to_send()[0]
        self.cookie = net.gateway._cookies.make_reply(
            self.init, messages.HandshakeInit.decode(self.init).sender, net.addr.cookie_bytes(), net.now
        )
        up = net.client.send_packet(ipv4_packet(net.client_ip, "198.51.100.1", b"u" * 40), net.now)
        down = net.gateway.send_packet(
            self.session, ipv4_packet("198.51.100.1", net.client_ip, b"d"), net.now
        )
        assert up is not None and down is not None
        self.up, self.down = up, down[0]
        self.config = control.config_message(self.session.config) if self.session.config else b""

    def _answer(self, init: bytes) -> bytes:
        net = self.net
        net.gateway.receive_datagram(init, Addr("192.0.2.200", 9), net.now)
        return net.gateway.datagrams_to_send()[-1][0]

    def alive(self) -> None:
        """The live session still carries traffic both ways (from the address the gateway assigned:
        an authenticated CONFIG may have told the client another one)."""
        net = self.net
        assert self.session.config is not None
        ip = str(self.session.config.ipv4.ip) if self.session.config.ipv4 else ""
        packet = ipv4_packet(ip, "198.51.100.1", b"still alive")
        sealed = net.client.send_packet(packet, net.now)
        assert sealed is not None
        assert net.gateway.receive_datagram(sealed, net.addr, net.now) == packet
        reply = ipv4_packet("198.51.100.1", ip, b"and back")
        out = net.gateway.send_packet(self.session, reply, net.now)
        assert out is not None
        assert net.client.receive_datagram(out[0], net.now) == reply
        net.gateway.datagrams_to_send()
        net.client.datagrams_to_send()


SCENE = Scene()


def _to_gateway(data: bytes) -> None:
    net = SCENE.net
    out = net.gateway.receive_datagram(data, net.addr, net.now)
    assert out is None or isinstance(out, bytes)


def _to_client(data: bytes) -> None:
    net = SCENE.net
    out = net.client.receive_datagram(data, net.now)
    assert out is None or isinstance(out, bytes)


@SETTINGS
@given(st.binary(max_size=1600))
def test_arbitrary_bytes(data: bytes) -> None:
    net = SCENE.net
    _to_gateway(data)
    _to_client(data)
    net.gateway.receive_opened(SCENE.index, data, net.addr, net.now)
    net.gateway.receive_opened(int.from_bytes(data[:4].ljust(4, b"\0"), "little"), data, net.addr, net.now)
    net.client.receive_opened(data)
    SCENE.alive()


def _mutating(base: Callable[[], bytes]) -> st.SearchStrategy[bytes]:
    return st.deferred(lambda: mutations(base()))


@SETTINGS
@given(_mutating(lambda: SCENE.init), st.booleans())
def test_mutated_message_1(data: bytes, restamp: bool) -> None:
    _to_gateway(_restamp_mac1(data, SCENE.gateway_public) if restamp else data)
    _to_client(data)
    SCENE.alive()


@SETTINGS
@given(_mutating(lambda: SCENE.resp))
def test_mutated_message_2_and_cookie_reply(data: bytes) -> None:
    _to_client(data)
    _to_gateway(data)
    SCENE.alive()


@SETTINGS
@given(_mutating(lambda: SCENE.cookie))
def test_mutated_cookie_reply(data: bytes) -> None:
    _to_client(data)
    _to_gateway(data)
    SCENE.alive()


@SETTINGS
@given(_mutating(lambda: SCENE.final))
def test_mutated_message_3(data: bytes) -> None:
    _to_gateway(data)
    _to_client(data)
    SCENE.alive()


@SETTINGS
@given(_mutating(lambda: SCENE.up), _mutating(lambda: SCENE.down))
def test_mutated_transport(up: bytes, down: bytes) -> None:
    _to_gateway(up)
    _to_client(down)
    SCENE.alive()


@SETTINGS
@given(st.one_of(_mutating(lambda: SCENE.config), _mutating(lambda: control.probe_message(7))))
def test_mutated_control_messages_under_the_session_keys(plaintext: bytes) -> None:
    """What an authenticated but buggy or hostile peer can send: any plaintext, properly sealed."""
    net = SCENE.net
    client_kp, gateway_kp = net.client.current, SCENE.session.current
    assert client_kp is not None and gateway_kp is not None
    marked = bytes([control.CONTROL_MARKER]) + plaintext[1:] if plaintext else plaintext
    for payload in (plaintext, marked):
        _to_client(gateway_kp.seal(payload))
        net.client.receive_opened(payload)
        if len(payload) > 1 and payload[0] == control.CONTROL_MARKER and payload[1] == control.CTRL_CLOSE:
            continue  # the client's own CLOSE ends its session: that is what it is for
        _to_gateway(client_kp.seal(payload))
        net.gateway.receive_opened(SCENE.index, payload, net.addr, net.now)
    SCENE.alive()


# ---------------------------------------------------------------- credentials of both kinds, in message 3


class Credentials:
    def __init__(self) -> None:
        self.now = time.time()
        issuer = IssuerKey.generate()
        self.epoch_key = EpochKey(epoch_of(self.now, DEFAULT_EPOCH_LENGTH), BlindRSAPrivateKey.generate(2048))
        self.verifier = AnyCredentialVerifier(
            CredentialVerifier([issuer.public_key()]),
            EpochVerifier([self.epoch_key.public], DEFAULT_EPOCH_LENGTH),
        )
        self.issuer = issuer
        self.gateway_key = KeyPair.generate()
        self.gateway = GatewayProtocol(self.gateway_key, _WallClock(self.verifier, self.now))
        self.client_key = KeyPair.generate()

    def ed25519(self) -> bytes:
        return issue(self.issuer, self.client_key.public, self.now).encode()

    def blind(self) -> bytes:
        request = CredentialRequest(self.epoch_key.public, self.client_key.public)
        return request.finalize(sign_blinded(self.epoch_key, request.blinded)).encode()

    def present(self, credential: bytes) -> None:
        """A real handshake whose message 3 carries ``credential``."""
        cookies = CookieGenerator(self.gateway_key.public)
        hs = InitiatorHandshake(self.client_key, self.gateway_key.public, 3, cookies, 0.0)
        addr = Addr("192.0.2.9", 9)
        assert self.gateway.receive_datagram(hs.init_message, addr, 0.0) is None
        hs.read_response(messages.HandshakeResp.decode(self.gateway.datagrams_to_send()[-1][0]))
        payload = b"\x01" + len(credential).to_bytes(2, "big") + credential
        final = messages.HandshakeFinal(hs.remote_index, hs._hs.write_message(payload)).encode()
        assert self.gateway.receive_datagram(final, addr, 0.0) is None
        self.gateway.datagrams_to_send()
        for session_id in list(self.gateway.sessions):
            self.gateway.end_session(session_id)
        while self.gateway.next_event() is not None:
            pass


class _WallClock:
    def __init__(self, verifier: AnyCredentialVerifier, now: float) -> None:
        self.verifier, self.now = verifier, now

    def verify(self, data: bytes, static_public: bytes, now: float) -> object:
        return self.verifier.verify(data, static_public, self.now)


@pytest.fixture(scope="module")
def creds() -> Credentials:
    c = Credentials()
    c.present(c.ed25519())
    c.present(c.blind())
    assert c.gateway.counters["handshakes"] == 2, c.gateway.counters
    return c


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_mutated_credentials_of_both_kinds_are_refused_not_raised(
    creds: Credentials, data: st.DataObject
) -> None:
    for credential in (creds.ed25519(), creds.blind()):
        creds.present(data.draw(mutations(credential)))


@SETTINGS
@given(st.data())
def test_message_3_with_any_payload_under_valid_noise_leaves_the_genuine_one_working(
    data: st.DataObject,
) -> None:
    """Only a client can make these (the Noise part needs its keys): a buggy or hostile one must
    neither make the gateway raise nor wedge its own pending handshake."""
    net = SCENE.net
    key = KeyPair.generate()
    credential = b"ok:" + key.public
    hs = InitiatorHandshake(key, SCENE.gateway_public, 11, CookieGenerator(SCENE.gateway_public), net.now)
    addr = Addr("192.0.2.201", 11)
    net.gateway.receive_datagram(hs.init_message, addr, net.now)
    hs.read_response(messages.HandshakeResp.decode(net.gateway.datagrams_to_send()[-1][0]))
    genuine = b"\x01" + len(credential).to_bytes(2, "big") + credential
    payload = data.draw(st.one_of(mutations(genuine), st.binary(max_size=200)))
    forged = messages.HandshakeFinal(hs.remote_index, hs._hs.copy().write_message(payload)).encode()
    sessions = len(net.gateway.sessions)
    refused = sum(v for k, v in net.gateway.counters.items() if k.startswith("refused-"))
    for _ in range(2):  # and its resend
        assert net.gateway.receive_datagram(forged, addr, net.now) is None
    if sum(v for k, v in net.gateway.counters.items() if k.startswith("refused-")) > refused:
        assert len(net.gateway.sessions) == sessions  # a credential refused ends the handshake
    elif len(net.gateway.sessions) == sessions:  # malformed: the genuine message 3 still completes
        final = messages.HandshakeFinal(hs.remote_index, hs._hs.write_message(genuine)).encode()
        net.gateway.receive_datagram(final, addr, net.now)
        assert len(net.gateway.sessions) == sessions + 1
    for session_id, session in list(net.gateway.sessions.items()):
        if session is not SCENE.session:
            net.gateway.end_session(session_id)
    net.gateway.datagrams_to_send()
    while net.gateway.next_event() is not None:
        pass
    SCENE.alive()
