"""Anonymous, short-lived client credentials signed with Ed25519 (format v1, alg 1).

A credential binds a client's static X25519 public key to a validity window
and an issuer key id, and nothing else: no name, no serial. Windows are
aligned to a granularity (an hour by default) so the issuance time does not
single out a client. docs/credentials.md is the specification.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable
from dataclasses import dataclass
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

_BODY = struct.Struct("!BB8sQQ32s")
SIGNATURE_LEN: Final = 64
ENCODED_LEN: Final = _BODY.size + SIGNATURE_LEN  # 122


def key_id_of(public: bytes) -> bytes:
    return hashlib.blake2s(KEY_ID_CONTEXT + public).digest()[:8]


class IssuerPublicKey:
    __slots__ = ("_key", "key_id", "raw")

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self.raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id_of(self.raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> IssuerPublicKey:
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        return cls(Ed25519PublicKey.from_public_bytes(raw))

    def to_bytes(self) -> bytes:
        return self.raw

    def verify_signature(self, signature: bytes, message: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class IssuerKey:
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
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def to_bytes(self) -> bytes:
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def public_key(self) -> IssuerPublicKey:
        return self._public

    @property
    def key_id(self) -> bytes:
        return self._public.key_id

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


@dataclass(frozen=True)
class Credential:
    version: int
    alg: int
    key_id: bytes
    not_before: int
    not_after: int
    static_public: bytes
    signature: bytes

    def body(self) -> bytes:
        return _BODY.pack(
            self.version, self.alg, self.key_id, self.not_before, self.not_after, self.static_public
        )

    def signed_message(self) -> bytes:
        return SIGNING_CONTEXT + self.body()

    def encode(self) -> bytes:
        return self.body() + self.signature

    @classmethod
    def decode(cls, data: bytes) -> Credential:
        if len(data) < 2:
            raise CredentialError("credential too short", "malformed")
        if data[0] != VERSION or data[1] != ALG_ED25519:
            raise CredentialError(f"credential version {data[0]} alg {data[1]} not supported", "unsupported")
        if len(data) != ENCODED_LEN:
            raise CredentialError(f"credential must be {ENCODED_LEN} bytes", "malformed")
        version, alg, key_id, not_before, not_after, static_public = _BODY.unpack_from(data)
        if not_after <= not_before:
            raise CredentialError("credential window is empty", "malformed")
        return cls(version, alg, key_id, not_before, not_after, static_public, data[_BODY.size :])


def issue(
    issuer: IssuerKey,
    static_public: bytes,
    now: float,
    lifetime: int = DEFAULT_LIFETIME,
    granularity: int = DEFAULT_GRANULARITY,
) -> Credential:
    """Sign a credential for ``static_public``, valid for ``lifetime`` from the start of this granule."""
    if len(static_public) != 32:
        raise ValueError("the client's static public key is 32 bytes")
    if lifetime <= 0 or granularity <= 0:
        raise ValueError("lifetime and granularity must be positive")
    not_before = int(now // granularity) * granularity
    unsigned = Credential(
        VERSION, ALG_ED25519, issuer.key_id, not_before, not_before + lifetime, static_public, b""
    )
    return Credential(
        VERSION,
        ALG_ED25519,
        issuer.key_id,
        not_before,
        not_before + lifetime,
        static_public,
        issuer.sign(unsigned.signed_message()),
    )


class CredentialVerifier:
    """Checks credentials against the issuer public keys a gateway trusts; keeps no list of users."""

    def __init__(self, trusted: Iterable[IssuerPublicKey], max_skew: int = DEFAULT_MAX_SKEW) -> None:
        self._keys: dict[bytes, IssuerPublicKey] = {}
        self.max_skew = max_skew
        for key in trusted:
            self.add(key)

    def add(self, key: IssuerPublicKey) -> None:
        self._keys[key.key_id] = key

    def remove(self, key_id: bytes) -> None:
        self._keys.pop(key_id, None)

    @property
    def key_ids(self) -> list[bytes]:
        return list(self._keys)

    def verify(self, data: bytes, static_public: bytes, now: float) -> Credential:
        """Return the credential if valid for ``static_public`` at ``now``, else raise CredentialError.

        Order: format, issuer known, signature, validity window (with skew), key binding.
        """
        credential = Credential.decode(data)
        issuer = self._keys.get(credential.key_id)
        if issuer is None:
            raise CredentialError("credential from an unknown issuer key", "unknown-issuer")
        if not issuer.verify_signature(credential.signature, credential.signed_message()):
            raise CredentialError("credential signature does not verify", "forged")
        if now + self.max_skew < credential.not_before:
            raise CredentialError("credential not yet valid", "not-yet-valid")
        if now - self.max_skew >= credential.not_after:
            raise CredentialError("credential expired", "expired")
        if not hmac.compare_digest(credential.static_public, static_public):
            raise CredentialError("credential certifies another key", "wrong-key")
        return credential
