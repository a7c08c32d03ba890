"""veilgate's own handshake (Noise_XKhfs_25519+MLKEM768_ChaChaPoly_BLAKE2s), pinned by committed vectors.

tests/vectors/make_hybrid_vectors.py made tests/vectors/hybrid_handshake.json;
any change to the wire format, the key schedule, the labels or the hybrid step
changes these bytes and must come with a new protocol version.
"""

from __future__ import annotations

import json
from pathlib import Path

from veilgate.protocol.crypto import KemKeyPair

from ..vectors.make_hybrid_vectors import run

VECTORS_DIR = Path(__file__).parent.parent / "vectors"

PINNED = json.loads((VECTORS_DIR / "hybrid_handshake.json").read_text())


def test_hybrid_handshake_reproduces_every_pinned_byte() -> None:
    encapsulation = (bytes.fromhex(PINNED["kem_ciphertext"]), bytes.fromhex(PINNED["kem_shared_secret"]))
    assert run(encapsulation) == PINNED


def test_recorded_encapsulation_matches_the_pinned_kem_key() -> None:
    kem = KemKeyPair.from_seed(bytes.fromhex(PINNED["kem_seed"]))
    shared = kem.decapsulate(bytes.fromhex(PINNED["kem_ciphertext"]))
    assert shared.hex() == PINNED["kem_shared_secret"]


def test_message_sizes() -> None:
    assert len(bytes.fromhex(PINNED["message1"])) == 1288
    assert len(bytes.fromhex(PINNED["message2"])) == 1164
    assert len(bytes.fromhex(PINNED["message3"])) == 72 + 3 + len(bytes.fromhex(PINNED["credential"]))
