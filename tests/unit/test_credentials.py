"""Anonymous credentials: pinned vectors, every refusal at its boundary, issuer rotation, arbitrary input."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate.credentials import (
    DEFAULT_GRANULARITY,
    DEFAULT_LIFETIME,
    DEFAULT_MAX_SKEW,
    ENCODED_LEN,
    REASONS,
    SIGNING_CONTEXT,
    Credential,
    CredentialVerifier,
    IssuerKey,
    IssuerPublicKey,
    issue,
    key_id_of,
)
from veilgate.protocol.errors import CredentialError, RemoteProtocolError

from ..vectors.make_credential_vectors import make

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "credentials.json").read_text()
)
NOW = 1_750_000_000.0
STATIC = bytes(range(100, 132))
OTHER_STATIC = bytes(range(200, 232))
# Fixed keys for property tests (hypothesis runs many examples per test function).
FIXED_ISSUER = IssuerKey.from_bytes(bytes(range(7, 39)))
FIXED_OTHER = IssuerKey.from_bytes(bytes(range(77, 109)))
FIXED_CRED = issue(FIXED_ISSUER, STATIC, NOW)
# Reasons a credential can get without a valid signature from a trusted issuer.
UNSIGNED_REASONS = {"malformed", "unsupported", "unknown-issuer", "forged"}


@pytest.fixture
def issuer() -> IssuerKey:
    return IssuerKey.generate()


def verifier_for(*issuers: IssuerKey, skew: int = DEFAULT_MAX_SKEW) -> CredentialVerifier:
    return CredentialVerifier([i.public_key() for i in issuers], max_skew=skew)


def assert_discreet(exc: CredentialError, *secrets: bytes) -> None:
    """The error (which gateways log) names a reason, never the client's key or the signature."""
    assert exc.reason in REASONS
    text = " ".join([str(exc), repr(exc), *map(str, exc.args)]).lower()
    for secret in (STATIC, OTHER_STATIC, *secrets):
        if len(secret) >= 8:
            assert secret.hex() not in text
            assert repr(secret).lower() not in text
            assert secret[:8].hex() not in text


def refusal(verifier: CredentialVerifier, data: bytes, static: bytes = STATIC, now: float = NOW) -> str:
    with pytest.raises(CredentialError) as info:
        verifier.verify(data, static, now)
    assert_discreet(info.value, static, data[58:122])
    return info.value.reason


# --- pinned vectors -----------------------------------------------------------


def test_pinned_issuer_key_and_key_id() -> None:
    issuer = IssuerKey.from_bytes(bytes.fromhex(VECTORS["issuer_seed"]))
    public = issuer.public_key().to_bytes()
    assert issuer.to_bytes().hex() == VECTORS["issuer_seed"]
    assert public.hex() == VECTORS["issuer_public"]
    assert issuer.key_id.hex() == VECTORS["key_id"]
    assert hashlib.blake2s(b"veilgate issuer key id v1" + public).digest()[:8].hex() == VECTORS["key_id"]
    assert IssuerPublicKey.from_bytes(public).key_id.hex() == VECTORS["key_id"]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: f"now={c['now']}")
def test_pinned_issuance_reproduces_byte_for_byte(case: dict[str, Any]) -> None:
    issuer = IssuerKey.from_bytes(bytes.fromhex(VECTORS["issuer_seed"]))
    static = bytes.fromhex(case["static_public"])
    cred = issue(issuer, static, case["now"], lifetime=case["lifetime"], granularity=case["granularity"])
    assert (cred.not_before, cred.not_after) == (case["not_before"], case["not_after"])
    assert cred.signed_message().hex() == case["signed_message"]
    assert cred.encode().hex() == case["credential"]
    data = bytes.fromhex(case["credential"])
    assert Credential.decode(data) == cred
    assert verifier_for(issuer).verify(data, static, case["now"]) == cred


@pytest.mark.parametrize("entry", VECTORS["verify"], ids=lambda e: str(e["name"]))
def test_pinned_verification_outcomes(entry: dict[str, Any]) -> None:
    verifier = CredentialVerifier(
        [IssuerPublicKey.from_bytes(bytes.fromhex(VECTORS["issuer_public"]))], max_skew=entry["max_skew"]
    )
    data = bytes.fromhex(entry["credential"])
    static = bytes.fromhex(entry["static_public"])
    if entry["expect"] == "ok":
        assert verifier.verify(data, static, entry["now"]).encode() == data
    else:
        assert refusal(verifier, data, static, entry["now"]) == entry["expect"]


def test_every_reason_is_pinned() -> None:
    assert {e["expect"] for e in VECTORS["verify"]} == REASONS | {"ok"}


def test_vector_file_is_what_the_generator_writes() -> None:
    assert json.loads(json.dumps(make())) == VECTORS


# --- layout and keys -------------------------------------------------------------


def test_round_trip_and_byte_layout(issuer: IssuerKey) -> None:
    cred = issue(issuer, STATIC, NOW)
    data = cred.encode()
    assert len(data) == ENCODED_LEN == 122
    assert Credential.decode(data) == cred
    assert (data[0], data[1]) == (1, 1) == (cred.version, cred.alg)
    assert data[2:10] == issuer.key_id == cred.key_id
    assert int.from_bytes(data[10:18], "big") == cred.not_before
    assert int.from_bytes(data[18:26], "big") == cred.not_after
    assert data[26:58] == STATIC == cred.static_public
    assert data[58:] == cred.signature
    assert cred.signed_message() == b"veilgate credential v1\x00" + data[:58] == SIGNING_CONTEXT + data[:58]
    # A plain Ed25519 verification of the documented message (what a second implementation does).
    raw_public = Ed25519PublicKey.from_public_bytes(issuer.public_key().to_bytes())
    raw_public.verify(data[58:], SIGNING_CONTEXT + data[:58])
    assert verifier_for(issuer).verify(data, STATIC, NOW) == cred


def test_defaults() -> None:
    assert (DEFAULT_LIFETIME, DEFAULT_GRANULARITY, DEFAULT_MAX_SKEW) == (6 * 3600, 3600, 120)
    assert CredentialVerifier([]).max_skew == DEFAULT_MAX_SKEW


def test_issuer_key_serialisation(issuer: IssuerKey) -> None:
    again = IssuerKey.from_bytes(issuer.to_bytes())
    assert len(issuer.to_bytes()) == 32
    assert again.public_key() == issuer.public_key()
    assert again.key_id == issuer.key_id == key_id_of(issuer.public_key().to_bytes())
    assert len(issuer.key_id) == 8
    public = IssuerPublicKey.from_bytes(issuer.public_key().to_bytes())
    assert public == issuer.public_key() and hash(public) == hash(issuer.public_key())
    assert public.key_id == issuer.key_id
    assert IssuerKey.generate().key_id != issuer.key_id
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(ValueError):
            IssuerKey.from_bytes(bad)
        with pytest.raises(ValueError):
            IssuerPublicKey.from_bytes(bad)


def test_reprs_reveal_no_secret_and_no_client(issuer: IssuerKey) -> None:
    cred = issue(issuer, STATIC, NOW)
    assert issuer.to_bytes().hex() not in repr(issuer)
    assert issuer.key_id.hex() in repr(issuer) and issuer.key_id.hex() in repr(issuer.public_key())
    for secret in (STATIC, cred.signature):
        assert secret.hex() not in repr(cred) and repr(secret) not in repr(cred)


def test_zero_issuer_key_would_accept_forgeries_so_it_is_refused() -> None:
    # Why small-order keys are refused: with the all-zero "key" (a placeholder in a
    # configuration file, say) an all-zero signature verifies.
    Ed25519PublicKey.from_public_bytes(bytes(32)).verify(bytes(64), b"x")
    with pytest.raises(ValueError):
        IssuerPublicKey.from_bytes(bytes(32))


@pytest.mark.parametrize("raw", VECTORS["small_order_issuer_keys"])
def test_small_order_and_non_canonical_issuer_keys_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        IssuerPublicKey.from_bytes(bytes.fromhex(raw))
    with pytest.raises(ValueError):
        IssuerPublicKey(Ed25519PublicKey.from_public_bytes(bytes.fromhex(raw)))


# --- issuance ---------------------------------------------------------------------


def test_windows_are_aligned_so_issuance_time_does_not_single_out_a_client(issuer: IssuerKey) -> None:
    granule = int(NOW // 3600) * 3600
    a = issue(issuer, STATIC, granule)
    b = issue(issuer, OTHER_STATIC, granule + 3599.999)
    assert (a.not_before, a.not_after) == (b.not_before, b.not_after) == (granule, granule + 6 * 3600)
    c = issue(issuer, STATIC, granule + 3600)
    assert c.not_before == granule + 3600
    d = issue(issuer, STATIC, NOW, lifetime=600, granularity=60)
    assert d.not_before % 60 == 0 and d.not_after - d.not_before == 600


@given(
    now=st.floats(min_value=0, max_value=2**40),
    granularity=st.integers(min_value=1, max_value=86_400),
    extra=st.integers(min_value=0, max_value=86_400),
)
@settings(max_examples=200, deadline=None)
def test_issued_credentials_are_valid_when_issued(now: float, granularity: int, extra: int) -> None:
    lifetime = granularity + extra
    cred = issue(FIXED_ISSUER, STATIC, now, lifetime=lifetime, granularity=granularity)
    assert cred.not_before % granularity == 0
    assert cred.not_before <= now < cred.not_before + granularity <= cred.not_after
    assert cred.not_after - cred.not_before == lifetime
    assert verifier_for(FIXED_ISSUER, skew=0).verify(cred.encode(), STATIC, now) == cred


def test_issue_validates_inputs(issuer: IssuerKey) -> None:
    for static in (b"", b"short", bytes(31), bytes(33)):
        with pytest.raises(ValueError):
            issue(issuer, static, NOW)
    for lifetime, granularity in ((0, 3600), (-1, 3600), (3600, 0), (3600, -60), (3599, 3600)):
        with pytest.raises(ValueError):
            issue(issuer, STATIC, NOW, lifetime=lifetime, granularity=granularity)
    for now in (math.nan, math.inf, -math.inf, -1.0):
        with pytest.raises(ValueError):
            issue(issuer, STATIC, now)
    with pytest.raises(ValueError):
        issue(issuer, STATIC, 2**64 - 3600, lifetime=7200, granularity=3600)  # not_after beyond u64
    assert issue(issuer, STATIC, 0).not_before == 0


def test_encode_refuses_fields_of_the_wrong_size(issuer: IssuerKey) -> None:
    cred = issue(issuer, STATIC, NOW)
    for bad in (
        replace(cred, key_id=cred.key_id[:7]),
        replace(cred, key_id=cred.key_id + b"\x00"),
        replace(cred, static_public=STATIC[:31]),
        replace(cred, static_public=STATIC + b"\x00"),
        replace(cred, signature=cred.signature[:63]),
        replace(cred, signature=b""),
        replace(cred, not_before=-1),
        replace(cred, not_after=2**64),
        replace(cred, version=256),
        replace(cred, alg=-1),
    ):
        with pytest.raises(ValueError):
            bad.encode()


# --- refusals ----------------------------------------------------------------------


def test_forged_signature_every_byte(issuer: IssuerKey) -> None:
    data = issue(issuer, STATIC, NOW).encode()
    v = verifier_for(issuer)
    for offset in range(58, 122):
        for bit in (0x01, 0x80):
            tampered = bytearray(data)
            tampered[offset] ^= bit
            assert refusal(v, bytes(tampered)) == "forged"


def test_forged_signed_fields(issuer: IssuerKey) -> None:
    cred = issue(issuer, STATIC, NOW)
    data = cred.encode()
    v = verifier_for(issuer)
    for offset in range(2, 58):
        tampered = bytearray(data)
        tampered[offset] ^= 0x01
        nb = int.from_bytes(tampered[10:18], "big")
        na = int.from_bytes(tampered[18:26], "big")
        if offset < 10:
            expected = "unknown-issuer"  # the key id names no trusted key
        elif na <= nb:
            expected = "malformed"  # the window became empty
        else:
            expected = "forged"
        assert refusal(v, bytes(tampered)) == expected, offset
    # Extending the window, or swapping in the presenter's own static key, breaks the signature.
    assert refusal(v, replace(cred, not_after=cred.not_after + 3600).encode()) == "forged"
    assert refusal(v, replace(cred, static_public=OTHER_STATIC).encode(), static=OTHER_STATIC) == "forged"
    # So does a credential signed by another key claiming a trusted key id.
    other = IssuerKey.generate()
    forged = replace(cred, not_before=0, not_after=2**40)
    forged = replace(forged, signature=other.sign(forged.signed_message()))
    assert refusal(v, forged.encode()) == "forged"


def test_unknown_issuer(issuer: IssuerKey) -> None:
    data = issue(IssuerKey.generate(), STATIC, NOW).encode()
    assert refusal(verifier_for(issuer), data) == "unknown-issuer"
    assert refusal(CredentialVerifier([]), data) == "unknown-issuer"


@pytest.mark.parametrize("skew", [0, 1, 120, 3600])
def test_window_boundaries_exactly(issuer: IssuerKey, skew: int) -> None:
    cred = issue(issuer, STATIC, NOW, lifetime=3600)
    data = cred.encode()
    v = verifier_for(issuer, skew=skew)
    nb, na = cred.not_before, cred.not_after
    # not yet valid iff now + skew < not_before
    assert v.verify(data, STATIC, nb - skew) == cred
    assert v.verify(data, STATIC, float(nb - skew)) == cred
    assert refusal(v, data, now=nb - skew - 0.001) == "not-yet-valid"
    assert refusal(v, data, now=nb - skew - 1) == "not-yet-valid"
    # expired iff now - skew >= not_after
    assert v.verify(data, STATIC, na + skew - 0.001) == cred
    assert v.verify(data, STATIC, na + skew - 1) == cred
    assert refusal(v, data, now=na + skew) == "expired"
    assert refusal(v, data, now=float(na + skew)) == "expired"


def test_non_finite_now_fails_closed(issuer: IssuerKey) -> None:
    data = issue(issuer, STATIC, NOW).encode()
    v = verifier_for(issuer)
    assert refusal(v, data, now=math.nan) == "not-yet-valid"
    assert refusal(v, data, now=-math.inf) == "not-yet-valid"
    assert refusal(v, data, now=math.inf) == "expired"


def test_wrong_static_key(issuer: IssuerKey) -> None:
    data = issue(issuer, STATIC, NOW).encode()
    v = verifier_for(issuer)
    assert refusal(v, data, static=OTHER_STATIC) == "wrong-key"
    assert refusal(v, data, static=bytes(32)) == "wrong-key"
    assert refusal(v, data, static=STATIC[:31]) == "wrong-key"
    assert refusal(v, data, static=b"") == "wrong-key"


def test_malformed_and_unsupported(issuer: IssuerKey) -> None:
    data = issue(issuer, STATIC, NOW).encode()
    v = verifier_for(issuer)
    for length in range(ENCODED_LEN + 40):
        if length == 1:
            continue  # b"\x01" alone
        candidate = (data + bytes(40))[:length]
        if length != ENCODED_LEN:
            assert refusal(v, candidate) == "malformed", length
    assert refusal(v, b"\x01") == "malformed"
    for version in (0, 2, 3, 127, 255):
        assert refusal(v, bytes([version]) + data[1:]) == "unsupported"
        assert refusal(v, bytes([version])) == "unsupported"
    for alg in (0, 2, 255):
        assert refusal(v, data[:1] + bytes([alg]) + data[2:]) == "unsupported"
        # An RSA blind-signature credential (alg 2) will be longer: still "unsupported", not "malformed".
        assert refusal(v, data[:1] + bytes([alg]) + data[2:58] + bytes(256)) == "unsupported"
    # A validly signed credential with an empty window is malformed.
    cred = issue(issuer, STATIC, NOW)
    empty = replace(cred, not_after=cred.not_before)
    empty = replace(empty, signature=issuer.sign(empty.signed_message()))
    assert refusal(v, empty.encode()) == "malformed"
    with pytest.raises(CredentialError) as info:
        Credential.decode(data[:-1])
    assert info.value.reason == "malformed" and isinstance(info.value, RemoteProtocolError)


def test_verification_order(issuer: IssuerKey) -> None:
    cred = issue(issuer, STATIC, NOW, lifetime=3600)
    late = cred.not_after + 10_000
    v = verifier_for(issuer)
    # unknown issuer before the signature and the window
    stranger = issue(IssuerKey.generate(), STATIC, NOW, lifetime=3600)
    assert refusal(v, stranger.encode(), now=late, static=OTHER_STATIC) == "unknown-issuer"
    # signature before the window and the key
    bad_sig = replace(cred, signature=bytes(64)).encode()
    assert refusal(v, bad_sig, now=late, static=OTHER_STATIC) == "forged"
    # window before the key
    assert refusal(v, cred.encode(), now=late, static=OTHER_STATIC) == "expired"
    assert refusal(v, cred.encode(), now=cred.not_before - 10_000, static=OTHER_STATIC) == "not-yet-valid"


def test_issuer_rotation(issuer: IssuerKey) -> None:
    new = IssuerKey.generate()
    v = verifier_for(issuer)
    old_cred = issue(issuer, STATIC, NOW).encode()
    new_cred = issue(new, STATIC, NOW).encode()
    assert v.key_ids == [issuer.key_id]
    assert refusal(v, new_cred) == "unknown-issuer"
    # Overlap: the provider publishes the new key, gateways trust both for a while.
    v.add(new.public_key())
    v.add(new.public_key())  # idempotent
    assert sorted(v.key_ids) == sorted([issuer.key_id, new.key_id])
    assert v.verify(new_cred, STATIC, NOW) and v.verify(old_cred, STATIC, NOW)
    # The old key is retired.
    v.remove(issuer.key_id)
    assert v.key_ids == [new.key_id]
    assert refusal(v, old_cred) == "unknown-issuer"
    assert v.verify(new_cred, STATIC, NOW)
    v.remove(issuer.key_id)  # removing an unknown id is harmless
    v.remove(b"")
    v.add(issuer.public_key())
    assert v.verify(old_cred, STATIC, NOW)


def test_verifier_refuses_negative_skew(issuer: IssuerKey) -> None:
    with pytest.raises(ValueError):
        CredentialVerifier([issuer.public_key()], max_skew=-1)


# --- arbitrary input -------------------------------------------------------------------


def _decode_or_refuse(data: bytes) -> None:
    try:
        cred = Credential.decode(data)
    except CredentialError as exc:
        assert exc.reason in {"malformed", "unsupported"}
        assert_discreet(exc, data[26:58], data[58:122])
    else:
        assert cred.encode() == data


def _verify_or_refuse(verifier: CredentialVerifier, data: bytes, static: bytes, now: float) -> str:
    try:
        cred = verifier.verify(data, static, now)
    except CredentialError as exc:
        assert_discreet(exc, static, data[26:58], data[58:122])
        return exc.reason
    assert cred.encode() == data
    return "ok"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_with_a_typed_error(data: bytes) -> None:
    _decode_or_refuse(data)
    v = verifier_for(FIXED_ISSUER)
    assert _verify_or_refuse(v, data, STATIC, NOW) in UNSIGNED_REASONS


@settings(max_examples=500, deadline=None)
@given(
    body=st.binary(min_size=0, max_size=130),
    now=st.floats(allow_nan=True, allow_infinity=True),
    static=st.binary(max_size=40),
)
def test_arbitrary_credentials_under_a_trusted_key_id(body: bytes, now: float, static: bytes) -> None:
    # Past the header and the key id, so the window and signature checks see arbitrary input.
    data = b"\x01\x01" + FIXED_ISSUER.key_id + body
    _decode_or_refuse(data)
    v = verifier_for(FIXED_ISSUER, FIXED_OTHER)
    assert _verify_or_refuse(v, data, static, now) in {"malformed", "forged"}


@settings(max_examples=500, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(min_value=0, max_value=121), st.integers(min_value=1, max_value=255)),
        min_size=1,
        max_size=4,
    ),
    cut=st.integers(min_value=0, max_value=130),
)
def test_tampered_credentials_are_never_accepted(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(FIXED_CRED.encode())
    for offset, xor in edits:
        data[offset] ^= xor
    tampered = bytes(data + bytes(8))[:cut]
    v = verifier_for(FIXED_ISSUER)
    reason = _verify_or_refuse(v, tampered, STATIC, NOW)
    if tampered == FIXED_CRED.encode():
        assert reason == "ok"
    else:
        assert reason in UNSIGNED_REASONS


@settings(max_examples=300, deadline=None)
@given(
    issued_at=st.integers(min_value=0, max_value=2**36),
    granularity=st.integers(min_value=1, max_value=7200),
    extra=st.integers(min_value=0, max_value=50_000),
    offset=st.floats(min_value=-100_000, max_value=100_000),
    skew=st.integers(min_value=0, max_value=600),
    same_key=st.booleans(),
)
def test_verification_matches_the_specified_rules(
    issued_at: int, granularity: int, extra: int, offset: float, skew: int, same_key: bool
) -> None:
    cred = issue(FIXED_ISSUER, STATIC, issued_at, lifetime=granularity + extra, granularity=granularity)
    now = issued_at + offset
    presented = STATIC if same_key else OTHER_STATIC
    if now + skew < cred.not_before:
        expected = "not-yet-valid"
    elif now - skew >= cred.not_after:
        expected = "expired"
    elif not same_key:
        expected = "wrong-key"
    else:
        expected = "ok"
    assert _verify_or_refuse(verifier_for(FIXED_ISSUER, skew=skew), cred.encode(), presented, now) == expected
