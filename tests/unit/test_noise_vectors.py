"""veilgate's own Noise implementation reproduces the published Noise_XK_25519_ChaChaPoly_BLAKE2s vectors.

The vectors (tests/vectors/noise_xk_25519_chachapoly_blake2s.json) come from
cacophony's vector file. Every handshake message and every transport message
after it must match byte for byte, written by one side and read by the other.
Messages alternate between the initiator (even indices) and the responder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.noise import XK, CipherState, HandshakeState

VECTORS = json.loads(
    (Path(__file__).parent.parent / "vectors" / "noise_xk_25519_chachapoly_blake2s.json").read_text()
)


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_vector(vector: dict[str, Any]) -> None:
    name = vector["name"].encode()
    init_static = KeyPair.from_private_bytes(_h(vector["init_static"]))
    resp_static = KeyPair.from_private_bytes(_h(vector["resp_static"]))
    assert resp_static.public == _h(vector["init_remote_static"])
    initiator = HandshakeState(
        name,
        XK,
        True,
        _h(vector["init_prologue"]),
        s=init_static,
        e=KeyPair.from_private_bytes(_h(vector["init_ephemeral"])),
        rs=resp_static.public,
    )
    responder = HandshakeState(
        name,
        XK,
        False,
        _h(vector["resp_prologue"]),
        s=resp_static,
        e=KeyPair.from_private_bytes(_h(vector["resp_ephemeral"])),
    )
    messages = vector["messages"]
    n_handshake = len(XK.messages)
    for i, msg in enumerate(messages[:n_handshake]):
        writer, reader = (initiator, responder) if i % 2 == 0 else (responder, initiator)
        wire = writer.write_message(_h(msg["payload"]))
        assert wire.hex() == msg["ciphertext"], f"handshake message {i}"
        assert reader.read_message(wire) == _h(msg["payload"])
    assert initiator.complete and responder.complete
    assert initiator.handshake_hash == responder.handshake_hash
    # Required, not optional: the hash binds the whole transcript, including what no key depends on
    # (the last message's payload), which the transport messages below cannot catch.
    assert initiator.handshake_hash.hex() == vector["handshake_hash"]
    assert responder.rs == init_static.public
    i_send, i_recv = initiator.split()
    r_recv, r_send = responder.split()
    ciphers: dict[bool, tuple[CipherState, CipherState]] = {True: (i_send, r_recv), False: (r_send, i_recv)}
    for i, msg in enumerate(messages[n_handshake:], start=n_handshake):
        send, recv = ciphers[i % 2 == 0]
        wire = send.encrypt_with_ad(b"", _h(msg["payload"]))
        assert wire.hex() == msg["ciphertext"], f"transport message {i}"
        assert recv.decrypt_with_ad(b"", wire) == _h(msg["payload"])
