"""Blind credentials (format v1, alg 2): RSA blind signatures by per-epoch issuer keys.

The provider runs one RSA issuer key per **epoch** (a fixed-length period,
one day by default). A client that wants a credential for its new static key
builds the message below, blinds it (RFC 9474), has the issuer sign it blind,
and unblinds the signature. The issuer never sees the static key, the message
or the final signature, so nothing it stored or logged can be matched to a
connection. The validity window is the epoch's, not anything the issuer could
choose per client: a gateway accepts a credential of the current epoch and of
the one before it.

Signed (prepared) message, RFC 9474 randomized: ``prefix (32 random bytes) ‖
"veilgate blind credential v1\\0" ‖ key id (8) ‖ epoch (u64, big-endian) ‖
static public key (32)``.

Credential layout (big-endian)::

    version (1) = 1 | alg (1) = 2 | key id (8) | epoch (8) | static public key (32)
    | prefix (32) | signature length (2) | signature (RSA modulus size)
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from veilgate.credentials.blindrsa import BlindingState, BlindRSAError, BlindRSAPrivateKey, BlindRSAPublicKey
from veilgate.protocol.errors import CredentialError

VERSION: Final = 1
ALG_BLIND_RSA: Final = 2
DEFAULT_EPOCH_LENGTH: Final = 86400
CONTEXT: Final = b"veilgate blind credential v1\x00"
KEY_ID_CONTEXT: Final = b"veilgate epoch key id v1"
_HEAD = struct.Struct("!BB8sQ32s32sH")
MIN_MODULUS_BITS: Final = 2048
PUBLIC_EXPONENT: Final = 65537


def epoch_key_id(public_der: bytes) -> bytes:
    return hashlib.blake2s(KEY_ID_CONTEXT + public_der).digest()[:8]


def epoch_of(now: float, epoch_length: int) -> int:
    return int(now // epoch_length)


def credential_message(key_id: bytes, epoch: int, static_public: bytes) -> bytes:
    return CONTEXT + key_id + epoch.to_bytes(8, "big") + static_public


@dataclass(frozen=True)
class EpochPublicKey:
    """An issuer key's public half and the epoch it signs for (published in the provider document)."""

    epoch: int
    key: BlindRSAPublicKey

    def __post_init__(self) -> None:
        check_epoch_key(self.key)

    @functools.cached_property
    def key_id(self) -> bytes:
        """Derived from the key's DER encoding, once per object (the key cannot change)."""
        return epoch_key_id(self.key.to_der())


def check_epoch_key(key: BlindRSAPublicKey) -> None:
    """Refuse weak issuer keys: a modulus under 2048 bits, or a public exponent other than 65537.

    A small modulus can be factored (then anyone mints credentials); an odd
    exponent is no use to an honest issuer and only widens what clients must trust.
    """
    if key.k_bits < MIN_MODULUS_BITS:
        raise BlindRSAError(f"epoch key modulus of {key.k_bits} bits (at least {MIN_MODULUS_BITS} required)")
    if key.e != PUBLIC_EXPONENT:
        raise BlindRSAError(f"epoch key public exponent {key.e} (only {PUBLIC_EXPONENT} is accepted)")


class EpochKeyChanged(ValueError):  # noqa: N818 - a refusal the caller reports
    """The provider published another key for an epoch whose key was already seen."""


class EpochKeyLedger:
    """Every epoch key seen (epoch -> key id): one key per epoch, for everyone.

    A provider that gave each client its own epoch key could tell who holds a
    credential by the key that signed it. Clients and gateways therefore
    accept one key per epoch and remember it: a document with another key for
    a known epoch is refused. The ledger does no I/O; a client keeps it on
    disk beside its cached document (``to_json``/``from_json``) so a restart
    does not forget, a gateway keeps it in memory only.
    """

    KEEP_EPOCHS: Final = 4096

    def __init__(self, known: dict[int, bytes] | None = None) -> None:
        self.known: dict[int, bytes] = dict(known or {})

    def conflicts(self, keys: Iterable[EpochPublicKey]) -> list[int]:
        """Epochs whose key differs from the one already seen (no change is made)."""
        return sorted(k.epoch for k in keys if self.known.get(k.epoch, k.key_id) != k.key_id)

    def record(self, keys: Iterable[EpochPublicKey]) -> bool:
        """Check, then remember the keys; True if any was new.

        Raises EpochKeyChanged (and remembers nothing) if a key differs from one seen before.
        """
        keys = list(keys)
        changed = self.conflicts(keys)
        if changed:
            raise EpochKeyChanged(
                "the provider published another key for epoch "
                + ", ".join(str(e) for e in changed)
                + " than the one seen before: an issuer that can tell users apart by key; document refused"
            )
        new = {k.epoch: k.key_id for k in keys if k.epoch not in self.known}
        if not new:
            return False
        self.known.update(new)
        newest = max(self.known)
        self.known = {e: k for e, k in self.known.items() if e > newest - self.KEEP_EPOCHS}
        return True

    def to_json(self) -> dict[str, object]:
        return {"epochs": {str(e): k.hex() for e, k in sorted(self.known.items())}}

    @classmethod
    def from_json(cls, data: object) -> EpochKeyLedger:
        """Raises ValueError on anything but what ``to_json`` writes."""
        epochs = data.get("epochs") if isinstance(data, dict) else None
        if not isinstance(epochs, dict):
            raise ValueError("no epochs table")
        known: dict[int, bytes] = {}
        for e, k in epochs.items():
            if not isinstance(k, str) or len(k) != 16:
                raise ValueError(f"bad key id for epoch {e}")
            known[int(e)] = bytes.fromhex(k)
        return cls(known)


@dataclass(frozen=True)
class EpochKey:
    """The issuer's private key for one epoch; lives only in the provider service."""

    epoch: int
    key: BlindRSAPrivateKey

    @property
    def public(self) -> EpochPublicKey:
        return EpochPublicKey(self.epoch, self.key.public)


@dataclass(frozen=True)
class BlindCredential:
    key_id: bytes
    epoch: int
    static_public: bytes
    prefix: bytes
    signature: bytes

    def encode(self) -> bytes:
        return (
            _HEAD.pack(
                VERSION,
                ALG_BLIND_RSA,
                self.key_id,
                self.epoch,
                self.static_public,
                self.prefix,
                len(self.signature),
            )
            + self.signature
        )

    @classmethod
    def decode(cls, data: bytes) -> BlindCredential:
        if len(data) < 2:
            raise CredentialError("credential too short", "malformed")
        if data[0] != VERSION or data[1] != ALG_BLIND_RSA:
            raise CredentialError(f"credential version {data[0]} alg {data[1]} not supported", "unsupported")
        if len(data) < _HEAD.size:
            raise CredentialError("credential too short", "malformed")
        _, _, key_id, epoch, static, prefix, sig_len = _HEAD.unpack_from(data)
        if len(data) != _HEAD.size + sig_len or not 256 <= sig_len <= 1024:
            raise CredentialError("credential length does not match its signature", "malformed")
        return cls(key_id, epoch, static, prefix, data[_HEAD.size :])

    def prepared(self) -> bytes:
        return self.prefix + credential_message(self.key_id, self.epoch, self.static_public)


class CredentialRequest:
    """The client's side of one issuance: blind, then finalize with the issuer's answer."""

    def __init__(self, epoch_key: EpochPublicKey, static_public: bytes) -> None:
        if len(static_public) != 32:
            raise ValueError("the static public key is 32 bytes")
        self.epoch_key = epoch_key
        self.static_public = static_public
        pub = epoch_key.key
        self._prepared = pub.prepare(credential_message(epoch_key.key_id, epoch_key.epoch, static_public))
        self.blinded, self._state = pub.blind(self._prepared)

    def finalize(self, blind_signature: bytes) -> BlindCredential:
        sig = self.epoch_key.key.finalize(blind_signature, BlindingState(self._prepared, self._state.inv))
        return BlindCredential(
            self.epoch_key.key_id, self.epoch_key.epoch, self.static_public, self._prepared[:32], sig
        )


class EpochVerifier:
    """Gateway side: accepts blind credentials of the current and the previous epoch."""

    def __init__(self, keys: Iterable[EpochPublicKey], epoch_length: int, max_skew: int = 120) -> None:
        self.epoch_length = epoch_length
        self.max_skew = max_skew
        self._keys: dict[bytes, EpochPublicKey] = {}
        self._epoch_keys: tuple[tuple[int, bytes], ...] = ()
        self.update(keys)

    def update(self, keys: Iterable[EpochPublicKey]) -> None:
        keys = list(keys)
        if len({k.epoch for k in keys}) != len(keys):
            raise ValueError("more than one key for an epoch")
        self._keys = {k.key_id: k for k in keys}
        self._epoch_keys = tuple(sorted((k.epoch, k.key_id) for k in self._keys.values()))

    def epoch_keys(self) -> tuple[tuple[int, bytes], ...]:
        """The (epoch, key id) pairs accepted, oldest first (sent to clients for split-view detection)."""
        return self._epoch_keys

    def verify(self, data: bytes, static_public: bytes, now: float) -> BlindCredential:
        cred = BlindCredential.decode(data)
        key = self._keys.get(cred.key_id)
        if key is None:
            raise CredentialError("credential from an unknown epoch key", "unknown-issuer")
        if cred.epoch != key.epoch:
            raise CredentialError("credential claims another epoch than its key's", "wrong-epoch")
        if not key.key.verify(cred.signature, cred.prepared()):
            raise CredentialError("credential signature does not verify", "forged")
        if not math.isfinite(now):  # fail closed on a broken clock, as CredentialVerifier does
            raise CredentialError("no valid epoch at a time that is not finite", "expired")
        first = epoch_of(now - self.max_skew, self.epoch_length)
        last = epoch_of(now + self.max_skew, self.epoch_length)
        if cred.epoch > last:
            raise CredentialError("credential of a future epoch", "not-yet-valid")
        if cred.epoch < first - 1:
            raise CredentialError("credential of an expired epoch", "expired")
        if not hmac.compare_digest(cred.static_public, static_public):
            raise CredentialError("credential certifies another key", "wrong-key")
        return cred


class AnyCredentialVerifier:
    """Dispatches on the credential's alg byte: Ed25519 (alg 1) or blind RSA epoch keys (alg 2)."""

    def __init__(self, ed25519: object | None = None, blind: EpochVerifier | None = None) -> None:
        self.ed25519 = ed25519
        self.blind = blind

    def verify(self, data: bytes, static_public: bytes, now: float) -> object:
        alg = data[1] if len(data) > 1 else -1
        if alg == ALG_BLIND_RSA and self.blind is not None:
            return self.blind.verify(data, static_public, now)
        if alg == 1 and self.ed25519 is not None:
            return self.ed25519.verify(data, static_public, now)  # type: ignore[attr-defined]
        raise CredentialError("no verifier for this credential type", "unsupported")


def sign_blinded(key: EpochKey, blinded: bytes) -> bytes:
    """The issuer's whole part: an RSA private-key operation on bytes it cannot read."""
    return key.key.blind_sign(blinded)


__all__ = [
    "ALG_BLIND_RSA",
    "DEFAULT_EPOCH_LENGTH",
    "AnyCredentialVerifier",
    "BlindCredential",
    "CredentialRequest",
    "EpochKey",
    "EpochKeyChanged",
    "EpochKeyLedger",
    "EpochPublicKey",
    "EpochVerifier",
    "check_epoch_key",
    "epoch_of",
    "sign_blinded",
]
