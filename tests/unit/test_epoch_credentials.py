"""Blind credentials from per-epoch issuer keys: issuance round trip and every refusal at the gateway."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable

import gmpy2
import pytest

from veilgate.credentials import CredentialVerifier, IssuerKey, issue
from veilgate.credentials.blindrsa import BlindingState, BlindRSAPrivateKey, BlindRSAPublicKey
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


# ---------------------------------------------------------------- unlinkability, attacked

SMALL_PRIMES = (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97)
N_ISSUANCES = 8  # per trial: the issuer tries to tell which of 8 credentials came from which request
TRIALS = 30


class SeededSecrets:
    """Stands in for ``secrets`` inside blindrsa so the whole experiment is reproducible."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def token_bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def randbelow(self, n: int) -> int:
        return self.rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self.rng.getrandbits(k)


@dataclasses.dataclass
class IssuerView:
    """Everything the issuer has for one request: what it received, what it answered, and when."""

    order: int
    blinded: int
    blind_signature: int
    features: tuple[int, ...] = ()  # per-request values worked out once (see _features)


@dataclasses.dataclass
class Seen:
    """A credential as a gateway (pooling with the issuer) later sees it, in arrival order."""

    signature: int
    encoded: int  # signature^e mod n: the encoded message, public from the credential alone
    credential: BlindCredential
    features: tuple[int, ...] = ()
    sig_inverse: int = 0  # signature^-1 mod n, computed once


Strategy = Callable[[IssuerView, Seen, "Attack"], float]  # a score: lower is "more likely the same"


@dataclasses.dataclass
class Attack:
    n: int
    e: int
    p: int
    q: int
    d: int


def _features(a: Attack, first: int, second: int) -> tuple[int, ...]:
    """Quadratic characters mod the issuer's primes p and q of (blinded, blind sig) or (encoded, sig),
    computed once per item (the issuer's private operation needs no recomputing: blinded^d is the
    blind signature and encoded^d the signature, which the "implied r" strategies use)."""
    return (
        int(gmpy2.legendre(first, a.p)),
        int(gmpy2.legendre(first, a.q)),
        int(gmpy2.legendre(second, a.p)),
    )


STRATEGIES: dict[str, Strategy] = {
    # numeric closeness / equality of the blinded message and the encoded message
    "blinded~encoded": lambda v, c, a: abs(v.blinded - c.encoded),
    "blind-sig~sig": lambda v, c, a: abs(v.blind_signature - c.signature),
    # bit patterns
    "hamming(blinded, encoded)": lambda v, c, a: (v.blinded ^ c.encoded).bit_count(),
    "hamming(blind-sig, sig)": lambda v, c, a: (v.blind_signature ^ c.signature).bit_count(),
    "top-bits(blinded, encoded)": lambda v, c, a: abs(
        (v.blinded >> (a.n.bit_length() - 16)) - (c.encoded >> (a.n.bit_length() - 16))
    ),
    "low-bits(blind-sig, sig)": lambda v, c, a: ((v.blind_signature ^ c.signature) & 0xFFFF).bit_count(),
    # residues mod small primes, and quadratic character mod the issuer's own primes
    "residues mod small primes": lambda v, c, a: (
        -sum(
            (v.blinded % s == c.encoded % s) + (v.blind_signature % s == c.signature % s)
            for s in SMALL_PRIMES
        )
    ),
    "legendre mod p, q": lambda v, c, a: -sum(x == y for x, y in zip(v.features, c.features, strict=True)),
    # with the private key: the implied blinding factor r = blind_sig / sig; look for a "special" r
    "implied r small": lambda v, c, a: v.blind_signature * c.sig_inverse % a.n,
    "implied r low weight": lambda v, c, a: (v.blind_signature * c.sig_inverse % a.n).bit_count(),
    "implied r short": lambda v, c, a: (
        (v.blind_signature * c.sig_inverse % a.n).bit_length()
        + (a.n - v.blind_signature * c.sig_inverse % a.n).bit_length()
    ),
    # timing order: the i-th request is the i-th credential to arrive
    "arrival order": lambda v, c, a: 0.0,  # see _guess: ties go to the same position
}


def _guess(views: list[IssuerView], seen: list[Seen], strategy: Strategy, attack: Attack) -> list[int]:
    """For each credential (by arrival position), the request the strategy thinks it came from."""
    guesses = []
    for position, cred in enumerate(seen):
        scores = [(strategy(v, cred, attack), abs(v.order - position), v.order) for v in views]
        guesses.append(min(scores)[2])
    return guesses


def _run_attack(key: EpochKey, seed: int) -> dict[str, int]:
    """TRIALS rounds of N_ISSUANCES issuances; returns, per strategy, how many credentials it matched."""
    pub = key.key.public
    priv = key.key.key.private_numbers()
    attack = Attack(pub.n, pub.e, priv.p, priv.q, priv.d)
    shuffle = random.Random(seed)
    wins = dict.fromkeys(STRATEGIES, 0)
    for _ in range(TRIALS):
        views, finals = [], []
        for order in range(N_ISSUANCES):
            request = CredentialRequest(key.public, shuffle.randbytes(32))
            answer = sign_blinded(key, request.blinded)
            z, bs = int.from_bytes(request.blinded, "big"), int.from_bytes(answer, "big")
            views.append(IssuerView(order, z, bs, _features(attack, z, bs)))
            finals.append((order, request.finalize(answer)))
        shuffle.shuffle(finals)  # the credentials arrive at gateways in an order unrelated to issuance
        truth = [order for order, _ in finals]
        seen = []
        for _, cred in finals:
            sig = int.from_bytes(cred.signature, "big")
            encoded = pow(sig, pub.e, pub.n)
            inverse = int(gmpy2.invert(sig, pub.n))
            seen.append(Seen(sig, encoded, cred, _features(attack, encoded, sig), inverse))
        for name, strategy in STRATEGIES.items():
            guesses = _guess(views, seen, strategy, attack)
            wins[name] += sum(g == t for g, t in zip(guesses, truth, strict=True))
    return wins


def _chance_bound(trials: int, p: float, alpha: float = 1e-6) -> int:
    """The smallest c with P(Binomial(trials, p) >= c) < alpha: more wins than that is not chance."""
    tail = 0.0
    for c in range(trials, -1, -1):
        tail += math.comb(trials, c) * p**c * (1 - p) ** (trials - c)
        if tail >= alpha:
            return c + 1
    return 0


BOUND = _chance_bound(TRIALS * N_ISSUANCES, 1 / N_ISSUANCES)


def test_the_issuer_cannot_match_its_issuances_to_credentials(
    keys: dict[int, EpochKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlinkability, attacked: the issuer's whole view (blinded messages, blind signatures, their order,
    its private key) against the credentials a gateway later sees; no strategy beats guessing."""
    monkeypatch.setattr("veilgate.credentials.blindrsa.secrets", SeededSecrets(20261130))
    wins = _run_attack(keys[EPOCH], seed=7)
    expected = TRIALS  # TRIALS * N_ISSUANCES guesses, each right with probability 1/N_ISSUANCES
    assert 2 * expected > BOUND
    beaten = {name: w for name, w in wins.items() if w >= BOUND}
    assert not beaten, f"strategies better than chance ({expected} expected, bound {BOUND}): {beaten}"


def test_the_attack_wins_when_blinding_is_disabled(
    keys: dict[int, EpochKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attacker is competent: with the blinding factor r = 1 the same strategies link everything."""
    monkeypatch.setattr("veilgate.credentials.blindrsa.secrets", SeededSecrets(20261130))
    real_blind = BlindRSAPublicKey.blind

    def unblinded(
        self: BlindRSAPublicKey, prepared: bytes, *, salt: bytes | None = None, inv: int | None = None
    ) -> tuple[bytes, BlindingState]:
        return real_blind(self, prepared, salt=salt, inv=1)

    monkeypatch.setattr(BlindRSAPublicKey, "blind", unblinded)
    wins = _run_attack(keys[EPOCH], seed=7)
    total = TRIALS * N_ISSUANCES
    for name in ("blinded~encoded", "blind-sig~sig", "hamming(blinded, encoded)", "implied r small"):
        assert wins[name] == total, (name, wins[name])
    assert sum(w >= BOUND for w in wins.values()) >= 6


def test_keys_left_out_of_an_update_are_neither_accepted_nor_announced(keys: dict[int, EpochKey]) -> None:
    v = EpochVerifier([keys[EPOCH - 1].public, keys[EPOCH].public], LENGTH)
    old, new = keys[EPOCH - 1].public, keys[EPOCH].public
    assert v.epoch_keys() == ((EPOCH - 1, old.key_id), (EPOCH, new.key_id))
    previous = obtain(keys[EPOCH - 1]).encode()
    assert v.verify(previous, STATIC, NOW)
    v.update([new])
    assert v.epoch_keys() == ((EPOCH, new.key_id),)
    assert reason(v, previous) == "unknown-issuer"
    v.update([])
    assert v.epoch_keys() == ()
    assert reason(v, obtain(keys[EPOCH]).encode()) == "unknown-issuer"
