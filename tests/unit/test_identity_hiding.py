"""Identity hiding, shown on recorded handshakes.

The threat: an observer records every handshake, and later steals the
gateway's static private key. Which client made each connection?

- WireGuard's pattern, Noise IK, encrypts the client's static key in message 1
  under a key derived from ``es`` only: the gateway's static key and the
  client's ephemeral public key, which is on the wire. With the stolen key the
  observer decrypts message 1 and reads the client's key.
- veilgate's XKhfs sends the client's static key in message 3, under a key that
  also depends on ``ee`` (two ephemeral keys, both erased after the handshake)
  and on the ML-KEM-768 secret. The stolen static key is not enough.

A stronger observer breaks X25519 itself later (a quantum computer): it then holds every X25519
private key of a recorded handshake, the ephemeral ones too. Only the ML-KEM-768 secret stands
between it and message 3: without it, message 3 does not open; with it (the client's decapsulation
key, or the encapsulated secret), it does, and the transport keys follow. The same attacker on
plain Noise XK (no KEM) opens message 3 with the X25519 keys alone, which shows the attack is
competent and that it is the KEM that stops it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest

from veilgate.protocol import crypto
from veilgate.protocol.constants import NOISE_PROTOCOL_NAME, PROLOGUE
from veilgate.protocol.cookie import CookieGenerator
from veilgate.protocol.crypto import KemKeyPair, KeyPair
from veilgate.protocol.errors import DecryptError
from veilgate.protocol.handshake import FinalPayload, InitiatorHandshake, ResponderHandshake
from veilgate.protocol.messages import HandshakeFinal, HandshakeInit, HandshakeResp
from veilgate.protocol.noise import XK, XKHFS, HandshakePattern, HandshakeState

IK = HandshakePattern("IK", (), ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se")))


def record_veilgate_handshake(client: KeyPair, gateway: KeyPair) -> tuple[bytes, bytes, bytes]:
    init = InitiatorHandshake(client, gateway.public, 7, CookieGenerator(gateway.public), 0.0)
    msg1 = init.init_message
    resp = ResponderHandshake(gateway, HandshakeInit.decode(msg1), 9, 0.0, None)
    msg2 = resp.write_response()
    init.read_response(HandshakeResp.decode(msg2))
    msg3, _ = init.write_final(FinalPayload(b"credential"))
    payload, result = resp.read_final(HandshakeFinal.decode(msg3))
    assert result.remote_static == client.public and payload.credential == b"credential"
    return msg1, msg2, msg3


def test_stolen_gateway_key_does_not_reveal_the_client_in_veilgate() -> None:
    client, gateway = KeyPair.generate(), KeyPair.generate()
    msg1, msg2, msg3 = record_veilgate_handshake(client, gateway)
    transcript = msg1 + msg2 + msg3
    assert client.public not in transcript

    # The attacker replays the gateway's side with the stolen key: message 1 opens ...
    attacker = HandshakeState(NOISE_PROTOCOL_NAME, XKHFS, False, PROLOGUE, s=gateway)
    assert attacker.read_message(HandshakeInit.decode(msg1).noise) == b""
    # ... but the recorded message 2 was made with the gateway's ephemeral key and KEM
    # encapsulation, which are gone. The attacker can only make its own, and then the
    # encrypted static key in message 3 does not open.
    attacker.write_message(b"")
    with pytest.raises(DecryptError):
        attacker.read_message(HandshakeFinal.decode(msg3).noise)


def test_stolen_gateway_key_reveals_the_client_with_wireguard_style_ik() -> None:
    client, gateway = KeyPair.generate(), KeyPair.generate()
    name = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
    initiator = HandshakeState(name, IK, True, s=client, rs=gateway.public)
    responder = HandshakeState(name, IK, False, s=gateway)
    msg1 = initiator.write_message(b"")
    responder.read_message(msg1)
    initiator.read_message(responder.write_message(b""))
    assert responder.rs == client.public

    # Later, the attacker with the stolen key reads the recorded message 1 alone.
    attacker = HandshakeState(name, IK, False, s=gateway)
    attacker.read_message(msg1)
    assert attacker.rs == client.public


# ------------------------------------------------- an attacker who broke X25519


@dataclass(frozen=True)
class Recorded:
    """A recorded handshake (the Noise part of messages 1-3) and every secret behind it."""

    name: bytes
    pattern: HandshakePattern
    noise: tuple[bytes, bytes, bytes]
    client: KeyPair
    gateway: KeyPair
    client_e: KeyPair
    gateway_e: KeyPair
    kem: KemKeyPair | None
    """The client's ML-KEM-768 decapsulation key (None without a KEM in the pattern)."""
    kem_secret: bytes | None
    """The secret the gateway encapsulated (None without a KEM in the pattern)."""
    client_keys: tuple[bytes, bytes]
    """The client's transport keys (send, receive)."""


def record_with_every_key(client: KeyPair, gateway: KeyPair) -> Recorded:
    """A veilgate handshake through the real message 1-3 code, with its ephemeral and KEM keys kept."""
    client_e, gateway_e, kem = KeyPair.generate(), KeyPair.generate(), KemKeyPair.generate()
    secrets: list[bytes] = []

    def encapsulate(public: bytes) -> tuple[bytes, bytes]:
        ciphertext, shared = crypto.kem_encapsulate(public)
        secrets.append(shared)
        return ciphertext, shared

    init = InitiatorHandshake(
        client, gateway.public, 7, CookieGenerator(gateway.public), 0.0, ephemeral=client_e, kem=kem
    )
    msg1 = HandshakeInit.decode(init.init_message)
    resp = ResponderHandshake(gateway, msg1, 9, 0.0, None, ephemeral=gateway_e, encapsulate=encapsulate)
    msg2 = HandshakeResp.decode(resp.write_response())
    init.read_response(msg2)
    final, result = init.write_final(FinalPayload(b"credential"))
    msg3 = HandshakeFinal.decode(final)
    resp.read_final(msg3)
    assert len(secrets) == 1
    return Recorded(
        NOISE_PROTOCOL_NAME,
        XKHFS,
        (msg1.noise, msg2.noise, msg3.noise),
        client,
        gateway,
        client_e,
        gateway_e,
        kem,
        secrets[0],
        (result.send_key, result.recv_key),
    )


def record_plain_xk(client: KeyPair, gateway: KeyPair) -> Recorded:
    """The same handshake without the KEM tokens (Noise XK), on the Noise state machine alone."""
    name = b"Noise_XK_25519_ChaChaPoly_BLAKE2s"
    client_e, gateway_e = KeyPair.generate(), KeyPair.generate()
    i = HandshakeState(name, XK, True, PROLOGUE, s=client, e=client_e, rs=gateway.public)
    r = HandshakeState(name, XK, False, PROLOGUE, s=gateway, e=gateway_e)
    msg1 = i.write_message(b"")
    r.read_message(msg1)
    msg2 = r.write_message(b"")
    i.read_message(msg2)
    msg3 = i.write_message(FinalPayload(b"credential").encode())
    r.read_message(msg3)
    send, recv = i.split()
    assert send.k is not None and recv.k is not None
    return Recorded(
        name, XK, (msg1, msg2, msg3), client, gateway, client_e, gateway_e, None, None, (send.k, recv.k)
    )


class KemSpy(KemKeyPair):
    """Stands in for the client's ML-KEM key: the attacker has its public half (from message 1) only.

    It notes the KEM ciphertext it is handed (message 2 opens that far with X25519 keys) and
    answers with whatever secret the attacker has.
    """

    def __init__(self, public: bytes, secret: bytes) -> None:
        self.public = public
        self.secret = secret
        self.ciphertext: bytes | None = None

    def decapsulate(self, ciphertext: bytes) -> bytes:
        self.ciphertext = ciphertext
        return self.secret


@dataclass(frozen=True)
class Opened:
    client_static: bytes
    payload: bytes
    keys: tuple[bytes, bytes]
    """The client's transport keys (send, receive) as the attacker derives them."""


def attack(rec: Recorded, *, decapsulation_key: KemKeyPair | None, kem_secret: bytes | None) -> Opened:
    """Replay both sides of a recorded handshake with every X25519 private key, then read message 3.

    Raises DecryptError where the attacker's keys do not suffice.
    """
    msg1, msg2, msg3 = rec.noise
    # Message 1 opens with the gateway's static key: the client's KEM public key, if any.
    probe = HandshakeState(rec.name, rec.pattern, False, PROLOGUE, s=rec.gateway)
    probe.read_message(msg1)
    kem_ciphertext = b""
    if probe.re1 is not None:
        # The client's side again, with the client's keys: message 1 comes out byte for byte, and
        # message 2 opens up to the KEM ciphertext (its key depends on ee only).
        spy = KemSpy(probe.re1, kem_secret or bytes(32))
        client_side = HandshakeState(
            rec.name, rec.pattern, True, PROLOGUE, s=rec.client, e=rec.client_e, rs=rec.gateway.public, e1=spy
        )
        assert client_side.write_message(b"") == msg1
        with contextlib.suppress(DecryptError):  # a wrong KEM secret: message 2's payload does not open
            client_side.read_message(msg2)
        assert spy.ciphertext is not None
        kem_ciphertext = spy.ciphertext
        if decapsulation_key is not None:
            kem_secret = decapsulation_key.decapsulate(kem_ciphertext)
        if kem_secret is None:
            # Without the KEM: the best the attacker has is a secret of its own (any guess is as good).
            _, kem_secret = crypto.kem_encapsulate(probe.re1)
    secret = kem_secret

    def encapsulate(public: bytes) -> tuple[bytes, bytes]:
        assert secret is not None
        return kem_ciphertext, secret

    # The gateway's side again, with the gateway's static and ephemeral keys, then message 3.
    gateway_side = HandshakeState(
        rec.name, rec.pattern, False, PROLOGUE, s=rec.gateway, e=rec.gateway_e, encapsulate=encapsulate
    )
    gateway_side.read_message(msg1)
    gateway_side.write_message(b"")
    payload = gateway_side.read_message(msg3)
    assert gateway_side.rs is not None
    c1, c2 = gateway_side.split()
    assert c1.k is not None and c2.k is not None
    return Opened(gateway_side.rs, payload, (c1.k, c2.k))


def test_every_x25519_key_without_the_kem_secret_does_not_open_message_3() -> None:
    client, gateway = KeyPair.generate(), KeyPair.generate()
    rec = record_with_every_key(client, gateway)
    assert rec.pattern is XKHFS and client.public not in b"".join(rec.noise)
    with pytest.raises(DecryptError):
        attack(rec, decapsulation_key=None, kem_secret=None)


@pytest.mark.parametrize("holds", ["decapsulation key", "encapsulated secret"])
def test_every_x25519_key_with_the_kem_secret_opens_message_3_and_the_traffic(holds: str) -> None:
    client, gateway = KeyPair.generate(), KeyPair.generate()
    rec = record_with_every_key(client, gateway)
    if holds == "decapsulation key":
        opened = attack(rec, decapsulation_key=rec.kem, kem_secret=None)
    else:
        opened = attack(rec, decapsulation_key=None, kem_secret=rec.kem_secret)
    assert opened.client_static == client.public
    assert FinalPayload.decode(opened.payload).credential == b"credential"
    assert opened.keys == rec.client_keys


def test_every_x25519_key_opens_message_3_of_plain_xk() -> None:
    """The control: without the KEM tokens the same attacker needs nothing more than X25519 keys."""
    client, gateway = KeyPair.generate(), KeyPair.generate()
    rec = record_plain_xk(client, gateway)
    opened = attack(rec, decapsulation_key=None, kem_secret=None)
    assert opened.client_static == client.public
    assert opened.keys == rec.client_keys
