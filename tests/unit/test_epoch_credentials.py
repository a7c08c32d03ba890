"""Blind credentials from per-epoch issuer keys: issuance round trip and every refusal at the gateway."""

from __future__ import annotations

import pytest

from veilgate.credentials import CredentialVerifier, IssuerKey, issue
from veilgate.credentials.blindrsa import BlindRSAPrivateKey
from veilgate.credentials.epochs import (
    AnyCredentialVerifier,
    BlindCredential,
    CredentialRequest,
    EpochKey,
    EpochVerifier,
    sign_blinded,
)
from veilgate.protocol.errors import CredentialError

LENGTH = 3600
EPOCH = 480_000
NOW = EPOCH * LENGTH + 1800.0
STATIC = bytes(range(32))


@pytest.fixture(scope="module")
def keys() -> dict[int, EpochKey]:
    return {
        e: EpochKey(e, BlindRSAPrivateKey.generate(2048)) for e in (EPOCH - 2, EPOCH - 1, EPOCH, EPOCH + 1)
    }


def obtain(key: EpochKey, static: bytes = STATIC) -> BlindCredential:
    request = CredentialRequest(key.public, static)
    return request.finalize(sign_blinded(key, request.blinded))


def reason(verifier: EpochVerifier, data: bytes, static: bytes = STATIC, now: float = NOW) -> str:
    with pytest.raises(CredentialError) as info:
        verifier.verify(data, static, now)
    return info.value.reason


def test_issue_and_verify_current_and_previous_epoch(keys: dict[int, EpochKey]) -> None:
    v = EpochVerifier([k.public for k in keys.values()], LENGTH)
    for e in (EPOCH, EPOCH - 1):
        cred = obtain(keys[e])
        assert BlindCredential.decode(cred.encode()) == cred
        assert v.verify(cred.encode(), STATIC, NOW) == cred


def test_the_issuer_sees_nothing_of_the_credential(keys: dict[int, EpochKey]) -> None:
    request = CredentialRequest(keys[EPOCH].public, STATIC)
    blind_sig = sign_blinded(keys[EPOCH], request.blinded)
    cred = request.finalize(blind_sig)
    data = cred.encode()
    for seen_by_issuer in (request.blinded, blind_sig):
        assert STATIC not in seen_by_issuer
        assert cred.signature != seen_by_issuer and seen_by_issuer not in data


def test_refusals(keys: dict[int, EpochKey]) -> None:
    v = EpochVerifier([k.public for k in keys.values()], LENGTH)
    good = obtain(keys[EPOCH])
    data = bytearray(good.encode())
    data[-1] ^= 1
    assert reason(v, bytes(data)) == "forged"
    # The static key, the prefix or the epoch changed after signing: the signature no longer covers it.
    assert reason(
        v, BlindCredential(good.key_id, good.epoch, bytes(32), good.prefix, good.signature).encode()
    ) in ("forged",)
    assert reason(v, good.encode(), static=bytes(32)) == "wrong-key"
    # An epoch key reused for another epoch number.
    reused = BlindCredential(good.key_id, EPOCH - 1, good.static_public, good.prefix, good.signature)
    assert reason(v, reused.encode()) == "wrong-epoch"
    assert reason(v, obtain(keys[EPOCH - 2]).encode()) == "expired"
    assert reason(v, obtain(keys[EPOCH + 1]).encode()) == "not-yet-valid"
    stranger = EpochKey(EPOCH, BlindRSAPrivateKey.generate(2048))
    assert reason(v, obtain(stranger).encode()) == "unknown-issuer"
    assert reason(v, good.encode()[:-5]) == "malformed"
    assert reason(v, b"\x01\x07" + good.encode()[2:]) == "unsupported"


def test_skew_at_epoch_boundaries(keys: dict[int, EpochKey]) -> None:
    v = EpochVerifier([k.public for k in keys.values()], LENGTH, max_skew=120)
    nxt = obtain(keys[EPOCH + 1]).encode()
    start_next = (EPOCH + 1) * LENGTH
    assert v.verify(nxt, STATIC, start_next - 119)
    assert reason(v, nxt, now=start_next - 121) == "not-yet-valid"
    old = obtain(keys[EPOCH - 1]).encode()
    end_of_acceptance = (EPOCH + 1) * LENGTH
    assert v.verify(old, STATIC, end_of_acceptance + 119)
    assert reason(v, old, now=end_of_acceptance + 121) == "expired"


def test_dispatch_by_alg(keys: dict[int, EpochKey]) -> None:
    issuer = IssuerKey.generate()
    any_v = AnyCredentialVerifier(
        CredentialVerifier([issuer.public_key()]), EpochVerifier([k.public for k in keys.values()], LENGTH)
    )
    assert any_v.verify(obtain(keys[EPOCH]).encode(), STATIC, NOW)
    assert any_v.verify(issue(issuer, STATIC, NOW).encode(), STATIC, NOW)
    with pytest.raises(CredentialError):
        any_v.verify(b"\x01\x09", STATIC, NOW)


def test_every_pairing_of_issuance_and_credential_is_equally_consistent(keys: dict[int, EpochKey]) -> None:
    """Unlinkability, shown: the issuer's transcript fits each credential equally well.

    The issuer sees (blinded message, blind signature) per request; the gateway later sees
    credentials. For *every* pairing of a transcript i with a credential j there is a blinding
    factor r with ``blinded_i = EM_j * r^e`` and ``blind_sig_i = sig_j * r`` (mod n), where EM_j is
    the encoded message the signature opens to. So nothing in the two views says which request
    produced which credential.
    """
    key = keys[EPOCH]
    pub = key.key.public
    n, e = pub.n, pub.e
    transcripts: list[tuple[int, int]] = []
    credentials: list[BlindCredential] = []
    for static in (bytes([1]) * 32, bytes([2]) * 32):
        request = CredentialRequest(key.public, static)
        answer = sign_blinded(key, request.blinded)
        transcripts.append((int.from_bytes(request.blinded, "big"), int.from_bytes(answer, "big")))
        credentials.append(request.finalize(answer))
    for blinded, blind_sig in transcripts:
        for cred in credentials:
            sig = int.from_bytes(cred.signature, "big")
            encoded = pow(sig, e, n)  # what the signature opens to: public, from the credential alone
            r = blind_sig * pow(sig, -1, n) % n
            assert encoded * pow(r, e, n) % n == blinded
            assert sig * r % n == blind_sig
