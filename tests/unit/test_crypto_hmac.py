"""HMAC-BLAKE2s as the protocol computes it agrees with the standard library's HMAC."""

from __future__ import annotations

import hashlib
import hmac

from veilgate.protocol import crypto


def test_hmac_blake2s_agrees_with_the_standard_library_for_every_key_length() -> None:
    for key_len in (*range(0, 70), 100, 128, 129, 200):
        key = bytes((7 * i + key_len) & 0xFF for i in range(key_len))
        for data in (b"", b"\x01", bytes(range(32)), bytes(1500)):
            assert crypto.hmac_hash(key, data) == hmac.new(key, data, hashlib.blake2s).digest()


def test_hkdf_is_the_noise_definition_over_hmac() -> None:
    def reference(ck: bytes, ikm: bytes, n: int) -> list[bytes]:
        temp = hmac.new(ck, ikm, hashlib.blake2s).digest()
        out = [hmac.new(temp, b"\x01", hashlib.blake2s).digest()]
        for i in range(2, n + 1):
            out.append(hmac.new(temp, out[-1] + bytes((i,)), hashlib.blake2s).digest())
        return out

    ck, ikm = bytes(range(32)), bytes(range(100, 132))
    for n in (2, 3):
        assert crypto.hkdf(ck, ikm, n) == reference(ck, ikm, n)
        assert crypto.hkdf(ck, b"", n) == reference(ck, b"", n)
