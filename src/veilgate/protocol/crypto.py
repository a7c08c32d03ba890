"""Cryptographic primitives of the protocol, on well-kept libraries.

X25519, ChaCha20-Poly1305 and ML-KEM-768 come from ``cryptography``; BLAKE2s
from ``hashlib``. HMAC-BLAKE2s and HKDF are the Noise specification's own
definitions (section 4.3), written here because Noise's HKDF with an
arbitrary number of outputs over HMAC-BLAKE2s is exactly what the spec and
its test vectors require. The HMAC is RFC 2104's two nested hashes on
``hashlib.blake2s``: the standard library's ``hmac`` takes a pure-Python path
for a digest given as a constructor (and OpenSSL's, for one given by name, looks
the digest up on every call), at twice the cost; a handshake computes sixteen.
"""

from __future__ import annotations

import hashlib
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from veilgate.protocol.errors import DecryptError, RemoteProtocolError

DHLEN = 32
HASHLEN = 32
BLOCKLEN = 64
TAGLEN = 16
KEYLEN = 32
KEM_PUBLIC_LEN = 1184
KEM_CIPHERTEXT_LEN = 1088
KEM_SHARED_LEN = 32
MAC_LEN = 16

__all__ = [
    "DHLEN",
    "HASHLEN",
    "KEM_CIPHERTEXT_LEN",
    "KEM_PUBLIC_LEN",
    "MAC_LEN",
    "TAGLEN",
    "Aead",
    "KemKeyPair",
    "KeyPair",
    "aead_decrypt",
    "aead_encrypt",
    "dh",
    "hash_",
    "hkdf",
    "hmac_hash",
    "kem_encapsulate",
    "mac",
    "nonce_bytes",
]


class KeyPair:
    """An X25519 key pair; ``public`` is the 32-byte raw public key."""

    __slots__ = ("_private", "public")

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self.public: bytes = private.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> KeyPair:
        if len(data) != DHLEN:
            raise ValueError(f"an X25519 private key is {DHLEN} bytes, got {len(data)}")
        return cls(X25519PrivateKey.from_private_bytes(data))

    def private_bytes(self) -> bytes:
        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def exchange(self, peer_public: bytes) -> bytes:
        return dh(self, peer_public)


def load_public(raw: bytes) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise RemoteProtocolError("invalid X25519 public key") from exc


def dh(keypair: KeyPair, peer_public: bytes | X25519PublicKey) -> bytes:
    """X25519. A low-order peer key (all-zero output) is a remote protocol error."""
    peer = load_public(peer_public) if isinstance(peer_public, bytes) else peer_public
    try:
        return keypair._private.exchange(peer)
    except ValueError as exc:  # cryptography refuses the all-zero shared secret
        raise RemoteProtocolError("invalid X25519 public key") from exc


class KemKeyPair:
    """An ML-KEM-768 decapsulation key and its 1184-byte encapsulation key."""

    __slots__ = ("_private", "public")

    def __init__(self, private: mlkem.MLKEM768PrivateKey) -> None:
        self._private = private
        self.public: bytes = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> KemKeyPair:
        return cls(mlkem.MLKEM768PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> KemKeyPair:
        """Deterministic key pair from a 64-byte seed (d || z, FIPS 203); used by vectors."""
        return cls(mlkem.MLKEM768PrivateKey.from_seed_bytes(seed))

    def decapsulate(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) != KEM_CIPHERTEXT_LEN:
            raise RemoteProtocolError("ML-KEM-768 ciphertext has the wrong length")
        try:
            return self._private.decapsulate(ciphertext)
        except ValueError as exc:
            raise RemoteProtocolError("invalid ML-KEM-768 ciphertext") from exc


def kem_encapsulate(public: bytes) -> tuple[bytes, bytes]:
    """Encapsulate to an ML-KEM-768 public key: returns (ciphertext, shared secret)."""
    try:
        key = mlkem.MLKEM768PublicKey.from_public_bytes(public)
    except ValueError as exc:
        raise RemoteProtocolError("invalid ML-KEM-768 public key") from exc
    shared, ciphertext = key.encapsulate()
    return ciphertext, shared


def nonce_bytes(n: int) -> bytes:
    """Noise's ChaChaPoly nonce: 32 zero bits then the 64-bit counter little-endian."""
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


class Aead:
    """ChaCha20-Poly1305 with a fixed key; thin wrapper that maps failures to DecryptError."""

    __slots__ = ("_aead", "decrypt_raw", "encrypt_raw")

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.encrypt_raw = self._aead.encrypt
        self.decrypt_raw = self._aead.decrypt

    def encrypt(self, n: int, ad: bytes, plaintext: bytes) -> bytes:
        return self._aead.encrypt(nonce_bytes(n), plaintext, ad)

    def decrypt(self, n: int, ad: bytes, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce_bytes(n), ciphertext, ad)
        except InvalidTag as exc:
            raise DecryptError("authentication tag mismatch") from exc


def aead_encrypt(key: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(nonce_bytes(n), plaintext, ad)


def aead_decrypt(key: bytes, n: int, ad: bytes, ciphertext: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(nonce_bytes(n), ciphertext, ad)
    except InvalidTag as exc:
        raise DecryptError("authentication tag mismatch") from exc


def hash_(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_blake2s = hashlib.blake2s


def hmac_hash(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s (RFC 2104): ``H((K ^ opad) || H((K ^ ipad) || data))``, K padded to the block."""
    if len(key) > BLOCKLEN:
        key = _blake2s(key).digest()
    key = key.ljust(BLOCKLEN, b"\x00")
    return _blake2s(key.translate(_OPAD) + _blake2s(key.translate(_IPAD) + data).digest()).digest()


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> list[bytes]:
    """Noise HKDF (spec section 4.3) with HMAC-BLAKE2s, 2 or 3 outputs."""
    temp = hmac_hash(chaining_key, ikm)
    out1 = hmac_hash(temp, b"\x01")
    out2 = hmac_hash(temp, out1 + b"\x02")
    if outputs == 2:
        return [out1, out2]
    out3 = hmac_hash(temp, out2 + b"\x03")
    return [out1, out2, out3]


def mac(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2s with a 16-byte output (WireGuard's MAC), used for mac1, mac2 and cookies."""
    return hashlib.blake2s(data, digest_size=MAC_LEN, key=key).digest()


def random_bytes(n: int) -> bytes:
    return secrets.token_bytes(n)
