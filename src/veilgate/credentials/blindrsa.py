"""RSA blind signatures, RFC 9474, variant RSABSSA-SHA384-PSS-Randomized.

The provider's issuer signs a client's credential request *blind*: it never
sees the static key it certifies, so issuer and gateway together cannot link
an issuance to a connection. The resulting signature is an ordinary RSA-PSS
signature (SHA-384, MGF1-SHA-384, 48-byte salt) over the prepared message; the
gateway verifies it with ``cryptography``.

Why by hand: no maintained Python library implements RFC 9474, and
``cryptography`` exposes neither raw RSA private-key operations nor the
EMSA-PSS encoding on its own. What is written here is exactly the RFC's
``Blind``, ``BlindSign``, ``Finalize`` and ``Prepare`` (sections 4.1-4.4) over
Python integers; key generation and every signature verification use
``cryptography``.

The randomized variant is chosen (RFC 9474, section 5): the client prepends 32
random bytes to its message, so the issuer cannot steer what it signs into a
chosen format and two requests for the same message look unrelated.

Side channels (RFC 9474, section 7.1). The issuer's private-key operation
runs on inputs chosen by whoever asks (in the open access mode: anyone), so
its timing must not leak the key:

- Python's ``pow`` on ints is a sliding-window exponentiation whose sequence
  of squarings and multiplications follows the exponent's bits, and CPython's
  bignum arithmetic is not constant-time. The private exponentiations use
  GMP's ``mpz_powm_sec`` (``gmpy2.powmod_sec``), made for exactly this:
  its time and memory access pattern depend only on the operand sizes.
- CRT with **exponent blinding**: each call uses ``d_p + r1 (p-1)`` and
  ``d_q + r2 (q-1)`` with fresh 64-bit random ``r1, r2`` (the same result, by
  Fermat), so no two operations use the same exponent and statistics over
  many timings (or power traces) do not add up to the key.
- **Base blinding**: the input is multiplied by ``b^e`` for a fresh random
  ``b`` and the result by ``b^-1``, so the exponentiation never sees the
  attacker-chosen value itself.
- The result is checked against the public key before it leaves (a fault
  during CRT would otherwise hand out a signature that factors the modulus).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass
from typing import Final

import gmpy2
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_der_private_key,
    load_der_public_key,
)

HASH_LEN: Final = 48
SALT_LEN: Final = 48
PREFIX_LEN: Final = 32
DEFAULT_BITS: Final = 3072
EXPONENT_BLINDING_BITS: Final = 64
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=SALT_LEN)


class BlindRSAError(ValueError):
    pass


def _i2osp(x: int, length: int) -> bytes:
    return x.to_bytes(length, "big")


def _os2ip(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _mgf1(seed: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha384(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:length])


def emsa_pss_encode(message: bytes, em_bits: int, salt: bytes) -> bytes:
    """EMSA-PSS-ENCODE (RFC 8017, section 9.1.1) with SHA-384 and MGF1-SHA-384."""
    em_len = (em_bits + 7) // 8
    if em_len < HASH_LEN + len(salt) + 2:
        raise BlindRSAError("encoding error: modulus too small")
    m_hash = hashlib.sha384(message).digest()
    h = hashlib.sha384(bytes(8) + m_hash + salt).digest()
    db = bytes(em_len - len(salt) - HASH_LEN - 2) + b"\x01" + salt
    masked = bytearray(a ^ b for a, b in zip(db, _mgf1(h, em_len - HASH_LEN - 1), strict=True))
    masked[0] &= 0xFF >> (8 * em_len - em_bits)
    return bytes(masked) + h + b"\xbc"


@dataclass(frozen=True)
class BlindingState:
    """What the client keeps between ``blind`` and ``finalize``."""

    prepared: bytes
    inv: bytes


class BlindRSAPublicKey:
    def __init__(self, key: rsa.RSAPublicKey) -> None:
        numbers = key.public_numbers()
        self.key = key
        self.n = numbers.n
        self.e = numbers.e
        self.k_bits = self.n.bit_length()
        self.k_len = (self.k_bits + 7) // 8

    @classmethod
    def from_der(cls, der: bytes) -> BlindRSAPublicKey:
        try:
            key = load_der_public_key(der)
        except UnsupportedAlgorithm as exc:  # a well-formed key of a type cryptography does not know
            raise BlindRSAError("not an RSA public key") from exc
        if not isinstance(key, rsa.RSAPublicKey):
            raise BlindRSAError("not an RSA public key")
        return cls(key)

    def to_der(self) -> bytes:
        return self.key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    @staticmethod
    def prepare(message: bytes, prefix: bytes | None = None) -> bytes:
        """RFC 9474 Prepare, randomized: 32 random bytes, then the message."""
        prefix = secrets.token_bytes(PREFIX_LEN) if prefix is None else prefix
        if len(prefix) != PREFIX_LEN:
            raise BlindRSAError("the message prefix is 32 bytes")
        return prefix + message

    def blind(
        self, prepared: bytes, *, salt: bytes | None = None, inv: int | None = None
    ) -> tuple[bytes, BlindingState]:
        """RFC 9474 Blind. ``salt`` and ``inv`` are for test vectors only; by default both are random."""
        salt = secrets.token_bytes(SALT_LEN) if salt is None else salt
        m = _os2ip(emsa_pss_encode(prepared, self.k_bits - 1, salt))
        if math.gcd(m, self.n) != 1:
            raise BlindRSAError("invalid input")
        if inv is None:
            while True:
                r = 1 + secrets.randbelow(self.n - 1)
                if math.gcd(r, self.n) == 1:
                    break
            inv = pow(r, -1, self.n)
        else:
            r = pow(inv, -1, self.n)
        z = m * pow(r, self.e, self.n) % self.n
        return _i2osp(z, self.k_len), BlindingState(prepared, _i2osp(inv, self.k_len))

    def finalize(self, blind_sig: bytes, state: BlindingState) -> bytes:
        """RFC 9474 Finalize: unblind, and verify the result as an RSA-PSS signature."""
        if len(blind_sig) != self.k_len or len(state.inv) != self.k_len:
            raise BlindRSAError("unexpected input size")
        s = _os2ip(blind_sig) * _os2ip(state.inv) % self.n
        sig = _i2osp(s, self.k_len)
        if not self.verify(sig, state.prepared):
            raise BlindRSAError("invalid signature")
        return sig

    def verify(self, signature: bytes, prepared: bytes) -> bool:
        """An ordinary RSASSA-PSS verification (``cryptography``)."""
        try:
            self.key.verify(signature, prepared, _PSS, hashes.SHA384())
        except InvalidSignature:
            return False
        return True


class BlindRSAPrivateKey:
    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.key = key
        self.public = BlindRSAPublicKey(key.public_key())
        priv = key.private_numbers()
        self._p, self._q = priv.p, priv.q
        self._dp, self._dq, self._qinv = priv.dmp1, priv.dmq1, priv.iqmp

    @classmethod
    def generate(cls, bits: int = DEFAULT_BITS) -> BlindRSAPrivateKey:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=bits))

    @classmethod
    def from_numbers(cls, p: int, q: int, d: int, e: int = 65537) -> BlindRSAPrivateKey:
        """A key from its primes (test vectors)."""
        n = p * q
        numbers = rsa.RSAPrivateNumbers(
            p,
            q,
            d,
            rsa.rsa_crt_dmp1(d, p),
            rsa.rsa_crt_dmq1(d, q),
            rsa.rsa_crt_iqmp(p, q),
            rsa.RSAPublicNumbers(e, n),
        )
        return cls(numbers.private_key())

    @classmethod
    def from_der(cls, der: bytes) -> BlindRSAPrivateKey:
        key = load_der_private_key(der, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise BlindRSAError("not an RSA private key")
        return cls(key)

    def to_der(self) -> bytes:
        return self.key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())

    def _rsasp1(self, m: int) -> int:
        """RSASP1 by CRT (RFC 8017, 5.1.2 ii) with blinded exponents and GMP's constant-time powm."""
        p, q = self._p, self._q
        # Fresh, nonzero blinding factors each call; (p-1) | r (p-1), so m^(d_p + r (p-1)) = m^d_p mod p.
        r1 = secrets.randbits(EXPONENT_BLINDING_BITS) | 1 << (EXPONENT_BLINDING_BITS - 1)
        r2 = secrets.randbits(EXPONENT_BLINDING_BITS) | 1 << (EXPONENT_BLINDING_BITS - 1)
        s1 = gmpy2.powmod_sec(gmpy2.mpz(m % p), gmpy2.mpz(self._dp + r1 * (p - 1)), gmpy2.mpz(p))
        s2 = gmpy2.powmod_sec(gmpy2.mpz(m % q), gmpy2.mpz(self._dq + r2 * (q - 1)), gmpy2.mpz(q))
        return int(s2 + q * ((s1 - s2) * self._qinv % p))

    def blind_sign(self, blinded_msg: bytes) -> bytes:
        """RFC 9474 BlindSign, with base blinding against timing and a check against faults."""
        pub = self.public
        if len(blinded_msg) != pub.k_len:
            raise BlindRSAError("unexpected input size")
        m = _os2ip(blinded_msg)
        if m >= pub.n:
            raise BlindRSAError("invalid message length")
        while True:
            b = 1 + secrets.randbelow(pub.n - 1)
            if math.gcd(b, pub.n) == 1:
                break
        s = self._rsasp1(m * pow(b, pub.e, pub.n) % pub.n) * pow(b, -1, pub.n) % pub.n
        if pow(s, pub.e, pub.n) != m:
            raise BlindRSAError("signing failed its own check")
        return _i2osp(s, pub.k_len)
