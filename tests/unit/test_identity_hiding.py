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
"""

from __future__ import annotations

import pytest

from veilgate.protocol.constants import NOISE_PROTOCOL_NAME, PROLOGUE
from veilgate.protocol.cookie import CookieGenerator
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.errors import DecryptError
from veilgate.protocol.handshake import FinalPayload, InitiatorHandshake, ResponderHandshake
from veilgate.protocol.messages import HandshakeFinal, HandshakeInit, HandshakeResp
from veilgate.protocol.noise import XKHFS, HandshakePattern, HandshakeState

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
