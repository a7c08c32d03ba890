"""Regenerate tests/vectors/hybrid_handshake.json: veilgate's XKhfs handshake with fixed keys.

ML-KEM-768 encapsulation in ``cryptography`` is randomized, so the generator
records one encapsulation (ciphertext and shared secret) and the test injects
it; everything else follows deterministically from the fixed keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from veilgate.protocol import crypto
from veilgate.protocol.cookie import CookieGenerator
from veilgate.protocol.crypto import KemKeyPair, KeyPair
from veilgate.protocol.handshake import FinalPayload, InitiatorHandshake, ResponderHandshake
from veilgate.protocol.keypair import Keypair
from veilgate.protocol.messages import HandshakeFinal, HandshakeInit, HandshakeResp

CLIENT_STATIC = bytes(range(1, 33))
CLIENT_EPHEMERAL = bytes(range(33, 65))
GATEWAY_STATIC = bytes(range(65, 97))
GATEWAY_EPHEMERAL = bytes(range(97, 129))
KEM_SEED = bytes(range(129, 193))
CLIENT_INDEX = 0x11223344
GATEWAY_INDEX = 0x55667788
CREDENTIAL = b"veilgate test credential"
PAYLOADS = [b"\x45" + bytes(39), b"", b"\x60" + bytes(59)]


def run(encapsulation: tuple[bytes, bytes] | None = None) -> dict[str, Any]:
    captured: dict[str, bytes] = {}

    def encapsulate(public: bytes) -> tuple[bytes, bytes]:
        ct, ss = encapsulation if encapsulation is not None else crypto.kem_encapsulate(public)
        captured["ct"], captured["ss"] = ct, ss
        return ct, ss

    client = KeyPair.from_private_bytes(CLIENT_STATIC)
    gateway = KeyPair.from_private_bytes(GATEWAY_STATIC)
    init = InitiatorHandshake(
        client,
        gateway.public,
        CLIENT_INDEX,
        CookieGenerator(gateway.public),
        0.0,
        ephemeral=KeyPair.from_private_bytes(CLIENT_EPHEMERAL),
        kem=KemKeyPair.from_seed(KEM_SEED),
    )
    msg1 = init.init_message
    resp = ResponderHandshake(
        gateway,
        HandshakeInit.decode(msg1),
        GATEWAY_INDEX,
        0.0,
        None,
        ephemeral=KeyPair.from_private_bytes(GATEWAY_EPHEMERAL),
        encapsulate=encapsulate,
    )
    msg2 = resp.write_response()
    init.read_response(HandshakeResp.decode(msg2))
    msg3, client_result = init.write_final(FinalPayload(CREDENTIAL))
    payload, gateway_result = resp.read_final(HandshakeFinal.decode(msg3))
    assert payload.credential == CREDENTIAL
    assert client_result.send_key == gateway_result.recv_key
    assert client_result.handshake_hash == gateway_result.handshake_hash
    c = Keypair(client_result.send_key, client_result.recv_key, CLIENT_INDEX, GATEWAY_INDEX, 0.0, True)
    g = Keypair(gateway_result.send_key, gateway_result.recv_key, GATEWAY_INDEX, CLIENT_INDEX, 0.0, False)
    return {
        "client_static_private": CLIENT_STATIC.hex(),
        "client_ephemeral_private": CLIENT_EPHEMERAL.hex(),
        "gateway_static_private": GATEWAY_STATIC.hex(),
        "gateway_ephemeral_private": GATEWAY_EPHEMERAL.hex(),
        "kem_seed": KEM_SEED.hex(),
        "client_index": CLIENT_INDEX,
        "gateway_index": GATEWAY_INDEX,
        "credential": CREDENTIAL.hex(),
        "kem_ciphertext": captured["ct"].hex(),
        "kem_shared_secret": captured["ss"].hex(),
        "message1": msg1.hex(),
        "message2": msg2.hex(),
        "message3": msg3.hex(),
        "handshake_hash": client_result.handshake_hash.hex(),
        "client_send_key": client_result.send_key.hex(),
        "gateway_send_key": gateway_result.send_key.hex(),
        "resume_token": client_result.resume_token.hex(),
        "client_to_gateway": [c.seal(p).hex() for p in PAYLOADS[:2]],
        "gateway_to_client": [g.seal(p).hex() for p in PAYLOADS[1:]],
        "payloads": [p.hex() for p in PAYLOADS],
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("hybrid_handshake.json")
    previous = json.loads(out.read_text()) if out.exists() else None
    enc = (
        (bytes.fromhex(previous["kem_ciphertext"]), bytes.fromhex(previous["kem_shared_secret"]))
        if previous
        else None
    )
    out.write_text(json.dumps(run(enc), indent=2) + "\n")
    print(f"wrote {out}")
