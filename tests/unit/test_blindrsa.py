"""RSA blind signatures (RFC 9474, RSABSSA-SHA384-PSS-Randomized): the RFC's vector and round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from veilgate.credentials.blindrsa import BlindingState, BlindRSAError, BlindRSAPrivateKey, BlindRSAPublicKey

V = json.loads(
    (Path(__file__).parent.parent / "vectors" / "rfc9474_rsabssa_sha384_pss_randomized.json").read_text()
)


def _int(s: str) -> int:
    return int(s, 16)


@pytest.fixture(scope="module")
def rfc_key() -> BlindRSAPrivateKey:
    key = BlindRSAPrivateKey.from_numbers(_int(V["p"]), _int(V["q"]), _int(V["d"]), _int(V["e"]))
    assert key.public.n == _int(V["n"])
    return key


def test_rfc9474_vector(rfc_key: BlindRSAPrivateKey) -> None:
    pub = rfc_key.public
    prepared = pub.prepare(bytes.fromhex(V["msg"]), prefix=bytes.fromhex(V["msg_prefix"]))
    assert prepared.hex() == V["input_msg"]
    blinded, state = pub.blind(prepared, salt=bytes.fromhex(V["salt"]), inv=_int(V["inv"]))
    assert blinded.hex() == V["blinded_msg"]
    blind_sig = rfc_key.blind_sign(blinded)
    assert blind_sig.hex() == V["blind_sig"]
    sig = pub.finalize(blind_sig, state)
    assert sig.hex() == V["sig"]
    assert pub.verify(sig, prepared)


@pytest.fixture(scope="module")
def key() -> BlindRSAPrivateKey:
    return BlindRSAPrivateKey.generate(2048)


def test_round_trip_and_unlinkable_blinding(key: BlindRSAPrivateKey) -> None:
    pub = BlindRSAPublicKey.from_der(key.public.to_der())
    message = b"veilgate test message"
    p1, p2 = pub.prepare(message), pub.prepare(message)
    assert p1 != p2  # randomized variant
    b1, s1 = pub.blind(p1)
    b2, s2 = pub.blind(p2)
    assert b1 != b2
    sig1 = pub.finalize(key.blind_sign(b1), s1)
    sig2 = pub.finalize(key.blind_sign(b2), s2)
    assert pub.verify(sig1, p1) and pub.verify(sig2, p2)
    # What the signer saw (b1, its output) has nothing in common with what is later shown (p1, sig1).
    assert b1 not in (p1, sig1) and key.blind_sign(b1) != sig1
    assert BlindRSAPrivateKey.from_der(key.to_der()).public.n == pub.n


def test_finalize_refuses_a_bad_blind_signature(key: BlindRSAPrivateKey) -> None:
    pub = key.public
    prepared = pub.prepare(b"m")
    blinded, state = pub.blind(prepared)
    bad = bytearray(key.blind_sign(blinded))
    bad[-1] ^= 1
    with pytest.raises(BlindRSAError):
        pub.finalize(bytes(bad), state)
    with pytest.raises(BlindRSAError):
        pub.finalize(b"short", state)
    with pytest.raises(BlindRSAError):
        pub.finalize(key.blind_sign(blinded), BlindingState(prepared, b"x"))


def test_blind_sign_refuses_bad_sizes(key: BlindRSAPrivateKey) -> None:
    with pytest.raises(BlindRSAError):
        key.blind_sign(b"\x01" * 10)
    with pytest.raises(BlindRSAError):
        key.blind_sign(b"\xff" * key.public.k_len)


def test_a_signature_for_one_message_does_not_verify_another(key: BlindRSAPrivateKey) -> None:
    pub = key.public
    prepared = pub.prepare(b"one")
    blinded, state = pub.blind(prepared)
    sig = pub.finalize(key.blind_sign(blinded), state)
    assert not pub.verify(sig, pub.prepare(b"one"))
    assert not pub.verify(sig, prepared[:-1] + b"x")


def test_private_operation_is_gmp_powmod_sec_with_fresh_blinded_exponents(
    key: BlindRSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gmpy2  # noqa: PLC0415

    calls: list[tuple[int, int]] = []
    real = gmpy2.powmod_sec

    def spy(base: object, exponent: object, modulus: object) -> object:
        calls.append((int(exponent), int(modulus)))  # type: ignore[call-overload]
        return real(base, exponent, modulus)

    monkeypatch.setattr(gmpy2, "powmod_sec", spy)  # blindrsa looks it up on the module at each call
    n, d = key.public.n, key.key.private_numbers().d
    p, q = key._p, key._q
    for m in (2, 12345, n - 2, 1 + n // 3):
        assert key._rsasp1(m) == pow(m, d, n)
    assert [mod for _, mod in calls] == [p, q] * 4
    exps_p = [e for e, mod in calls if mod == p]
    exps_q = [e for e, mod in calls if mod == q]
    assert len(set(exps_p)) == 4 and len(set(exps_q)) == 4  # a fresh exponent every call
    for e in exps_p:
        assert e % (p - 1) == key._dp and e >= (1 << 63) * (p - 1)  # d_p + r (p-1), r of 64 bits
    for e in exps_q:
        assert e % (q - 1) == key._dq and e >= (1 << 63) * (q - 1)


def test_a_faulty_private_operation_never_leaves(
    key: BlindRSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    blinded, _ = key.public.blind(key.public.prepare(b"m"))
    monkeypatch.setattr(key, "_rsasp1", lambda m: 12345)
    with pytest.raises(BlindRSAError, match="own check"):
        key.blind_sign(blinded)
