"""Anonymous credentials: pinned vectors, every refusal reason, issuer rotation, arbitrary input."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate.credentials import (
    ENCODED_LEN,
    Credential,
    CredentialVerifier,
    IssuerKey,
    IssuerPublicKey,
    issue,
)
from veilgate.protocol.errors import CredentialError, RemoteProtocolError

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "credentials.json").read_text())
NOW = 1_750_000_000.0
STATIC = bytes(range(100, 132))


@pytest.fixture
def issuer() -> IssuerKey:
    return IssuerKey.generate()


def verifier_for(*issuers: IssuerKey, skew: int = 120) -> CredentialVerifier:
    return CredentialVerifier([i.public_key() for i in issuers], max_skew=skew)


def refusal(verifier: CredentialVerifier, data: bytes, static: bytes = STATIC, now: float = NOW) -> str:
    with pytest.raises(CredentialError) as info:
        verifier.verify(data, static, now)
    assert STATIC.hex() not in str(info.value) and static.hex() not in str(info.value)
    return info.value.reason


def test_pinned_vectors() -> None:
    issuer = IssuerKey.from_bytes(bytes.fromhex(VECTORS["issuer_seed"]))
    assert issuer.public_key().to_bytes().hex() == VECTORS["issuer_public"]
    assert issuer.key_id.hex() == VECTORS["key_id"]
    verifier = verifier_for(issuer)
    for case in VECTORS["cases"]:
        static = bytes.fromhex(case["static_public"])
        cred = issue(issuer, static, case["now"], lifetime=case["lifetime"], granularity=case["granularity"])
        assert cred.encode().hex() == case["credential"]
        assert verifier.verify(bytes.fromhex(case["credential"]), static, case["now"]) == cred


def test_round_trip_and_layout(issuer: IssuerKey) -> None:
    cred = issue(issuer, STATIC, NOW)
    data = cred.encode()
    assert len(data) == ENCODED_LEN == 122
    assert Credential.decode(data) == cred
    assert cred.not_before % 3600 == 0 and cred.not_before <= NOW < cred.not_after
    assert cred.not_after - cred.not_before == 6 * 3600
    assert verifier_for(issuer).verify(data, STATIC, NOW) == cred


def test_windows_are_aligned_so_issuance_time_does_not_single_out_a_client(issuer: IssuerKey) -> None:
    a = issue(issuer, STATIC, NOW)
    b = issue(issuer, bytes(32), NOW + 1234)
    assert (a.not_before, a.not_after) == (b.not_before, b.not_after)


def test_forged_signature_and_forged_field(issuer: IssuerKey) -> None:
    data = issue(issuer, STATIC, NOW).encode()
    v = verifier_for(issuer)
    assert refusal(v, data[:-1] + bytes([data[-1] ^ 1])) == "forged"
    # Extending the validity window breaks the signature.
    tampered = bytearray(data)
    tampered[25] ^= 0x01
    assert refusal(v, bytes(tampered)) == "forged"
    # So does a credential signed by a key claiming a trusted key id.
    other = IssuerKey.generate()
    forged = Credential(1, 1, issuer.key_id, 0, 2**40, STATIC, b"")
    forged = Credential(1, 1, issuer.key_id, 0, 2**40, STATIC, other.sign(forged.signed_message()))
    assert refusal(v, forged.encode()) == "forged"


def test_unknown_issuer(issuer: IssuerKey) -> None:
    data = issue(IssuerKey.generate(), STATIC, NOW).encode()
    assert refusal(verifier_for(issuer), data) == "unknown-issuer"


def test_expired_and_not_yet_valid_with_skew_boundaries(issuer: IssuerKey) -> None:
    cred = issue(issuer, STATIC, NOW, lifetime=3600)
    data = cred.encode()
    v = verifier_for(issuer, skew=120)
    assert v.verify(data, STATIC, cred.not_after + 119.999)
    assert refusal(v, data, now=cred.not_after + 120) == "expired"
    assert v.verify(data, STATIC, cred.not_before - 120)
    assert refusal(v, data, now=cred.not_before - 120.001) == "not-yet-valid"


def test_wrong_static_key(issuer: IssuerKey) -> None:
    data = issue(issuer, STATIC, NOW).encode()
    assert refusal(verifier_for(issuer), data, static=bytes(32)) == "wrong-key"


def test_malformed_and_unsupported(issuer: IssuerKey) -> None:
    data = issue(issuer, STATIC, NOW).encode()
    v = verifier_for(issuer)
    assert refusal(v, data[:-1]) == "malformed"
    assert refusal(v, data + b"\x00") == "malformed"
    assert refusal(v, b"") == "malformed"
    assert refusal(v, b"\x02" + data[1:]) == "unsupported"
    assert refusal(v, data[:1] + b"\x02" + data[2:]) == "unsupported"


def test_issuer_rotation(issuer: IssuerKey) -> None:
    new = IssuerKey.generate()
    v = verifier_for(issuer)
    old_cred = issue(issuer, STATIC, NOW).encode()
    new_cred = issue(new, STATIC, NOW).encode()
    assert refusal(v, new_cred) == "unknown-issuer"
    v.add(new.public_key())
    assert v.verify(new_cred, STATIC, NOW) and v.verify(old_cred, STATIC, NOW)
    v.remove(issuer.key_id)
    assert refusal(v, old_cred) == "unknown-issuer"
    assert IssuerPublicKey.from_bytes(new.public_key().to_bytes()).key_id == new.key_id


def test_issue_validates_inputs(issuer: IssuerKey) -> None:
    with pytest.raises(ValueError):
        issue(issuer, b"short", NOW)
    with pytest.raises(ValueError):
        issue(issuer, STATIC, NOW, lifetime=0)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_with_a_typed_error(data: bytes) -> None:
    v = verifier_for(IssuerKey.from_bytes(bytes(32)))
    with contextlib.suppress(RemoteProtocolError):
        Credential.decode(data)
    try:
        v.verify(data, STATIC, NOW)
    except CredentialError as exc:
        assert exc.reason in {"malformed", "unsupported", "unknown-issuer", "forged"}
