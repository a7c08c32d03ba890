"""Anonymous, short-lived client credentials signed with Ed25519 (format v1, alg 1).

A credential binds a client's static X25519 public key to a validity window
and an issuer key id, and nothing else: no name, no serial. Windows are
aligned to a granularity (an hour by default) so the issuance time does not
single out a client. docs/credentials.md is the specification.

Wire format v1 (big-endian, 122 bytes)::

    version(1)=1 | alg(1)=1 | key_id(8) | not_before(u64) | not_after(u64) | static_public(32) | signature(64)

The signature is Ed25519 over ``SIGNING_CONTEXT`` followed by the first 58
bytes (every field before the signature).

This module does no I/O and reads no clock: callers pass ``now`` (Unix seconds).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from veilgate.protocol.errors import CredentialError

VERSION: Final = 1
ALG_ED25519: Final = 1
DEFAULT_LIFETIME: Final = 6 * 3600
DEFAULT_GRANULARITY: Final = 3600
DEFAULT_MAX_SKEW: Final = 120
SIGNING_CONTEXT: Final = b"veilgate credential v1\x00"
KEY_ID_CONTEXT: Final = b"veilgate issuer key id v1"

KEY_ID_LEN: Final = 8
STATIC_PUBLIC_LEN: Final = 32
SIGNATURE_LEN: Final = 64
_BODY: Final = struct.Struct("!BB8sQQ32s")
BODY_LEN: Final = _BODY.size  # 58
ENCODED_LEN: Final = BODY_LEN + SIGNATURE_LEN  # 122
_U64_MAX: Final = 2**64 - 1

# Refusal reasons (CredentialError.reason): short stable tokens, suited to counter names.
REASONS: Final = frozenset(
    {"malformed", "unsupported", "unknown-issuer", "forged", "expired", "not-yet-valid", "wrong-key"}
)

# Ed25519 public keys an issuer key must never be. A key of small order (one of
# the 8 torsion points) lets anyone forge signatures that verify (an all-zero
# placeholder key in a gateway's configuration would accept any credential), so
# such keys are refused however they are encoded. These are the y-coordinates
# of the 8 torsion points (identity, the point of order 2, the 2 points of order
# 4 share y = 0, the 4 points of order 8 share 2 values); the same list as
# libsodium's ``has_small_order`` blocklist. Encodings with y >= p are
# non-canonical (RFC 8032, 5.1.3) and refused too.
_P: Final = 2**255 - 19
_SMALL_ORDER_Y: Final = frozenset(
    {
        0,
        1,
        _P - 1,
        int.from_bytes(
            bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little"
        ),
        int.from_bytes(
            bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"), "little"
        ),
    }
)


def key_id_of(public: bytes) -> bytes:
    """The 8-byte key id of a raw Ed25519 issuer public key."""
    return hashlib.blake2s(KEY_ID_CONTEXT + public).digest()[:KEY_ID_LEN]


def _check_issuer_public(raw: bytes) -> None:
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if y >= _P:
        raise ValueError("non-canonical Ed25519 public key")
    if y in _SMALL_ORDER_Y:
        raise ValueError("Ed25519 public key of small order (it would accept forged signatures)")


class IssuerPublicKey:
    """An issuer's Ed25519 public key, as a gateway holds it."""

    __slots__ = ("_key", "key_id", "raw")

    def __init__(self, key: Ed25519PublicKey) -> None:
        raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        _check_issuer_public(raw)
        self._key = key
        self.raw: bytes = raw
        self.key_id: bytes = key_id_of(raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> IssuerPublicKey:
        """Load a raw 32-byte key; ValueError if it is not a usable Ed25519 public key."""
        raw = bytes(raw)
        _check_issuer_public(raw)  # before cryptography, which loads any 32 bytes
        return cls(Ed25519PublicKey.from_public_bytes(raw))

    def to_bytes(self) -> bytes:
        return self.raw

    def verify_signature(self, signature: bytes, message: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IssuerPublicKey) and self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"IssuerPublicKey(key_id={self.key_id.hex()})"


class IssuerKey:
    """The provider's Ed25519 signing key. ``to_bytes`` is the 32-byte seed (keep it secret)."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._public = IssuerPublicKey(key.public_key())

    @classmethod
    def generate(cls) -> IssuerKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes) -> IssuerKey:
        if len(raw) != 32:
            raise ValueError("an Ed25519 private key (seed) is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(raw)))

    def to_bytes(self) -> bytes:
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def public_key(self) -> IssuerPublicKey:
        return self._public

    @property
    def key_id(self) -> bytes:
        return self._public.key_id

    def sign(self, message: bytes) -> bytes:
        """Raw Ed25519 signature of ``message`` (``issue`` builds the message; tests forge with it)."""
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"IssuerKey(key_id={self.key_id.hex()})"  # never the seed


@dataclass(frozen=True)
class Credential:
    """A decoded credential. ``repr`` leaves out the client's key and the signature."""

    version: int
    alg: int
    key_id: bytes
    not_before: int
    not_after: int
    static_public: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    def body(self) -> bytes:
        """Every field before the signature, in wire order (58 bytes)."""
        if not (0 <= self.version <= 255 and 0 <= self.alg <= 255):
            raise ValueError("version and alg are single bytes")
        if len(self.key_id) != KEY_ID_LEN or len(self.static_public) != STATIC_PUBLIC_LEN:
            raise ValueError("key_id is 8 bytes and static_public 32 bytes")
        if not (0 <= self.not_before <= _U64_MAX and 0 <= self.not_after <= _U64_MAX):
            raise ValueError("not_before and not_after are unsigned 64-bit integers")
        return _BODY.pack(
            self.version, self.alg, self.key_id, self.not_before, self.not_after, self.static_public
        )

    def signed_message(self) -> bytes:
        """What the issuer signs: ``SIGNING_CONTEXT`` followed by ``body()``."""
        return SIGNING_CONTEXT + self.body()

    def encode(self) -> bytes:
        if len(self.signature) != SIGNATURE_LEN:
            raise ValueError("an Ed25519 signature is 64 bytes")
        return self.body() + self.signature

    @classmethod
    def decode(cls, data: bytes) -> Credential:
        """Parse the wire format or raise CredentialError (malformed, unsupported). No signature check."""
        data = bytes(data)
        if len(data) < 1:
            raise CredentialError("empty credential", "malformed")
        if data[0] != VERSION:
            raise CredentialError(f"credential version {data[0]} not supported", "unsupported")
        if len(data) < 2:
            raise CredentialError("credential too short", "malformed")
        if data[1] != ALG_ED25519:
            raise CredentialError(f"credential algorithm {data[1]} not supported", "unsupported")
        if len(data) != ENCODED_LEN:
            raise CredentialError(f"credential must be {ENCODED_LEN} bytes, not {len(data)}", "malformed")
        version, alg, key_id, not_before, not_after, static_public = _BODY.unpack_from(data)
        if not_after <= not_before:
            raise CredentialError("credential window is empty", "malformed")
        return cls(version, alg, key_id, not_before, not_after, static_public, data[BODY_LEN:])


def issue(
    issuer: IssuerKey,
    static_public: bytes,
    now: float,
    lifetime: int = DEFAULT_LIFETIME,
    granularity: int = DEFAULT_GRANULARITY,
) -> Credential:
    """Sign a credential for ``static_public`` (a client's X25519 public key).

    ``not_before`` is ``now`` rounded down to a multiple of ``granularity`` and
    ``not_after`` is ``not_before + lifetime``: every client issued a credential
    in the same granule gets the same window, so the window does not tell when
    (and so to whom) it was issued. A credential is valid for between
    ``lifetime - granularity`` and ``lifetime`` seconds after issuance, hence
    ``lifetime >= granularity`` (so it is never issued already expired).
    """
    if len(static_public) != STATIC_PUBLIC_LEN:
        raise ValueError("the client's static public key is 32 bytes")
    if lifetime <= 0 or granularity <= 0:
        raise ValueError("lifetime and granularity must be positive")
    if lifetime < granularity:
        raise ValueError("lifetime must be at least the granularity, or the credential may be born expired")
    if not (math.isfinite(now) and now >= 0):
        raise ValueError("now must be a finite, non-negative Unix time")
    not_before = int(now // granularity) * granularity
    not_after = not_before + lifetime
    if not_after > _U64_MAX:
        raise ValueError("validity window does not fit in 64 bits")
    unsigned = Credential(
        VERSION, ALG_ED25519, issuer.key_id, not_before, not_after, bytes(static_public), b""
    )
    signature = issuer.sign(unsigned.signed_message())
    return Credential(
        VERSION, ALG_ED25519, issuer.key_id, not_before, not_after, bytes(static_public), signature
    )


class CredentialVerifier:
    """Checks credentials against the issuer public keys a gateway trusts; keeps no list of users."""

    def __init__(self, trusted: Iterable[IssuerPublicKey], max_skew: int = DEFAULT_MAX_SKEW) -> None:
        if max_skew < 0:
            raise ValueError("max_skew must not be negative")
        self._keys: dict[bytes, IssuerPublicKey] = {}
        self.max_skew = max_skew
        for key in trusted:
            self.add(key)

    def add(self, key: IssuerPublicKey) -> None:
        """Trust ``key`` (from now on); adding a key already trusted does nothing."""
        self._keys[key.key_id] = key

    def remove(self, key_id: bytes) -> None:
        """Stop trusting the key with this id; unknown ids are ignored."""
        self._keys.pop(bytes(key_id), None)

    @property
    def key_ids(self) -> list[bytes]:
        return list(self._keys)

    def verify(self, data: bytes, static_public: bytes, now: float) -> Credential:
        """Return the credential if valid for ``static_public`` at ``now``, else raise CredentialError.

        Order: decode (malformed, unsupported), issuer known (unknown-issuer),
        signature (forged), window with skew (not-yet-valid, expired), key
        binding (wrong-key). Messages never carry the key or the signature.
        """
        credential = Credential.decode(data)
        issuer = self._keys.get(credential.key_id)
        if issuer is None:
            raise CredentialError("credential from an unknown issuer key", "unknown-issuer")
        if not issuer.verify_signature(credential.signature, credential.signed_message()):
            raise CredentialError("credential signature does not verify", "forged")
        # Written so that a NaN ``now`` fails closed (every comparison with NaN is false).
        if not now + self.max_skew >= credential.not_before:
            raise CredentialError("credential not yet valid", "not-yet-valid")
        if not now - self.max_skew < credential.not_after:
            raise CredentialError("credential expired", "expired")
        if not hmac.compare_digest(credential.static_public, bytes(static_public)):
            raise CredentialError("credential certifies another key", "wrong-key")
        return credential
