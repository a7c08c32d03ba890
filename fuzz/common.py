"""What the fuzz targets share: fixed keys, endpoints, established sessions and output checks.

Keys are fixed (derived from constant bytes) so that the committed seeds (fuzz/seeds.py) stay
valid messages for the harnesses: a seed sealed or MACed for the gateway's key is still
authentic when the fuzzer replays it.
"""

from __future__ import annotations

import copy
import copyreg
import hashlib
import ipaddress
import itertools
import os
from dataclasses import dataclass
from typing import TypeVar

from veilgate import fastpath
from veilgate.fastpath.keypair import CompiledKeypair
from veilgate.protocol import control, messages
from veilgate.protocol.client import ClientProtocol
from veilgate.protocol.control import TunnelConfig
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.errors import CredentialError
from veilgate.protocol.events import SessionEstablished
from veilgate.protocol.gateway import GatewayProtocol, Session
from veilgate.protocol.keypair import Keypair, KeypairFactory
from veilgate.protocol.noise import CipherState

NOW = 1_000_000.0


def fixed_key(label: str) -> KeyPair:
    return KeyPair.from_private_bytes(hashlib.blake2s(label.encode()).digest())


GATEWAY_KEY = fixed_key("fuzz gateway")
CLIENT_KEY = fixed_key("fuzz client")
CLIENT_V4 = ipaddress.IPv4Interface("10.201.0.2/16")
CLIENT_V6 = ipaddress.IPv6Interface("fd7a:201::2/64")
CONFIG = TunnelConfig(
    ipv4=CLIENT_V4,
    ipv6=CLIENT_V6,
    dns=(ipaddress.IPv4Address("10.201.0.1"),),
    routes=(ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0")),
    lease=3600,
    keepalive=25,
)


@dataclass(frozen=True)
class Addr:
    """An endpoint as the gateway's driver gives it: hashable, with the bytes cookies bind to."""

    host: str
    port: int

    def cookie_bytes(self) -> bytes:
        return ipaddress.ip_address(self.host).packed + self.port.to_bytes(2, "big")


CLIENT_ADDR = Addr("192.0.2.10", 40000)
OTHER_ADDR = Addr("2001:db8::7", 40001)


class CredentialIsKey:
    """Accepts the credential ``b"ok:" + static key``; refuses anything else with CredentialError."""

    def verify(self, data: bytes, static_public: bytes, now: float) -> object:
        if data != b"ok:" + static_public:
            raise CredentialError("credential refused", "forged")
        return None


CREDENTIAL = b"ok:" + CLIENT_KEY.public


KEYPAIR: KeypairFactory = CompiledKeypair if fastpath.wanted(os.environ) else Keypair
"""The keypairs the cores make: as a daemon would (``VEILGATE_FASTPATH=0`` fuzzes the pure-Python ones)."""


FIRST_INDEX = 0x1000
"""The gateway's receiver indices count up from here (instead of random) so seeds can name them."""


def new_gateway() -> GatewayProtocol:
    indices = itertools.count(FIRST_INDEX)
    return GatewayProtocol(
        GATEWAY_KEY, CredentialIsKey(), random_index=lambda: next(indices), new_keypair=KEYPAIR
    )


def new_client() -> ClientProtocol:
    return ClientProtocol(CLIENT_KEY, GATEWAY_KEY.public, CREDENTIAL, new_keypair=KEYPAIR)


def establish() -> tuple[ClientProtocol, GatewayProtocol, Session]:
    """A client and a gateway with a confirmed session, the config assigned and every output drained."""
    client, gateway = new_client(), new_gateway()
    client.connect(NOW)
    for _ in range(4):
        for d in client.datagrams_to_send():
            gateway.receive_datagram(d, CLIENT_ADDR, NOW)
        while (event := gateway.next_event()) is not None:
            if isinstance(event, SessionEstablished):
                gateway.assign(event.session_id, CONFIG, NOW)
        for d, _ in gateway.datagrams_to_send():
            client.receive_datagram(d, NOW)
        while client.next_event() is not None:
            pass
    session = next(iter(gateway.sessions.values()))
    assert client.connected and session.current is not None and client.config == CONFIG
    return client, gateway, session


def pending_handshake() -> tuple[ClientProtocol, GatewayProtocol, bytes]:
    """A client whose message 1 is in flight, the gateway that answered it, and the answer (message 2)."""
    client, gateway = new_client(), new_gateway()
    client.connect(NOW)
    (init,) = client.datagrams_to_send()
    gateway.receive_datagram(init, CLIENT_ADDR, NOW)
    ((response, _),) = gateway.datagrams_to_send()
    return client, gateway, response


def _cipher_state(k: bytes | None, n: int) -> CipherState:
    state = CipherState(k)
    state.n = n
    return state


# cryptography's AEAD objects cannot be copied; a Noise CipherState is rebuilt from its key and nonce.
copyreg.pickle(CipherState, lambda cs: (_cipher_state, (cs.k, cs.n)))

T = TypeVar("T")


def snapshot(obj: T) -> T:
    """A deep copy of a handshake in flight (keys included), to replay one state many times."""
    return copy.deepcopy(obj)


def xor_onto(valid: bytes, diff: bytes) -> bytes:
    """The fuzzer's bytes as a change to a valid message: byte i is ``valid[i] ^ diff[i]``.

    An all-zero diff (the seeds) is the valid message; bit flips of the seed are bit flips of the
    message; the diff's length is the message's, so truncations and extensions are reachable too.
    """
    n = len(valid)
    head = bytes(a ^ b for a, b in zip(valid, diff[:n], strict=False))
    return head + diff[n:]


def check_ip_packet(packet: bytes | None, where: str) -> None:
    """What receive_datagram may return: None, or one whole IPv4/IPv6 packet (padding stripped)."""
    if packet is None:
        return
    if not isinstance(packet, bytes):
        raise AssertionError(f"{where}: returned {type(packet).__name__}, not bytes")
    if not packet:
        raise AssertionError(f"{where}: returned an empty packet")
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            raise AssertionError(f"{where}: returned an IPv4 packet of {len(packet)} bytes")
        total = int.from_bytes(packet[2:4], "big")
        if total != len(packet):
            raise AssertionError(f"{where}: IPv4 total length {total} but {len(packet)} bytes returned")
    elif version == 6:
        if len(packet) < 40:
            raise AssertionError(f"{where}: returned an IPv6 packet of {len(packet)} bytes")
        total = 40 + int.from_bytes(packet[4:6], "big")
        if total != len(packet):
            raise AssertionError(f"{where}: IPv6 length {total} but {len(packet)} bytes returned")
    else:
        raise AssertionError(f"{where}: returned a packet of IP version {version}")


def check_outputs(gateway: GatewayProtocol | None = None, client: ClientProtocol | None = None) -> None:
    """Drain what the sides want to send; each datagram must be a well-formed veilgate message."""
    if gateway is not None:
        for d, endpoint in gateway.datagrams_to_send():
            messages.decode(d)
            if not hasattr(endpoint, "cookie_bytes"):
                raise AssertionError(f"gateway sends to {endpoint!r}")
        while gateway.next_event() is not None:
            pass
    if client is not None:
        for d in client.datagrams_to_send():
            messages.decode(d)
        while client.next_event() is not None:
            pass


__all__ = ["control"]
