"""The Noise Protocol Framework's state objects (revision 34), table-driven.

A handshake pattern is data (a table of tokens per message), interpreted by
:class:`HandshakeState`. Besides the core tokens (``e s ee es se ss``) it
supports the KEM tokens of the Noise "hfs" extension (``e1`` and ``ekem1``),
which veilgate uses for its hybrid post-quantum handshake.

Written here rather than taken from a library: the maintained Python Noise
package (``noiseprotocol``) supports neither the hfs tokens nor injecting the
ephemeral and KEM keys that test vectors require, and the state machine is
small. The primitives underneath all come from ``cryptography``/``hashlib``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from veilgate.protocol import crypto
from veilgate.protocol.crypto import (
    DHLEN,
    HASHLEN,
    KEM_CIPHERTEXT_LEN,
    KEM_PUBLIC_LEN,
    TAGLEN,
    KemKeyPair,
    KeyPair,
)
from veilgate.protocol.errors import LocalProtocolError, RemoteProtocolError

MAX_NONCE = 2**64 - 1


class CipherState:
    """Noise CipherState: a key and a 64-bit nonce counter."""

    __slots__ = ("_aead", "k", "n")

    def __init__(self, k: bytes | None = None) -> None:
        self.k = k
        self.n = 0
        self._aead = crypto.Aead(k) if k is not None else None

    def has_key(self) -> bool:
        return self.k is not None

    def copy(self) -> CipherState:
        twin = CipherState.__new__(CipherState)
        twin.k, twin.n, twin._aead = self.k, self.n, self._aead  # the AEAD object holds no state
        return twin

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise LocalProtocolError("nonce exhausted")
        out = self._aead.encrypt(self.n, ad, plaintext)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise LocalProtocolError("nonce exhausted")
        out = self._aead.decrypt(self.n, ad, ciphertext)
        self.n += 1
        return out


class SymmetricState:
    """Noise SymmetricState: chaining key ``ck``, handshake hash ``h`` and a CipherState."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        self.h = self.ck = _initial_hash(protocol_name)
        self.cipher = CipherState()

    def copy(self) -> SymmetricState:
        twin = SymmetricState.__new__(SymmetricState)
        twin.ck, twin.h, twin.cipher = self.ck, self.h, self.cipher.copy()
        return twin

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = crypto.hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = crypto.hash_(self.h, data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """Return the two transport keys (initiator-to-responder, responder-to-initiator)."""
        k1, k2 = crypto.hkdf(self.ck, b"", 2)
        return k1, k2


@functools.lru_cache(maxsize=8)
def _initial_hash(protocol_name: bytes) -> bytes:
    """``h`` (and ``ck``) before anything is mixed in: the name padded, or hashed if longer than a hash."""
    if len(protocol_name) <= HASHLEN:
        return protocol_name.ljust(HASHLEN, b"\x00")
    return crypto.hash_(protocol_name)


@dataclass(frozen=True)
class HandshakePattern:
    """A Noise handshake pattern as a table: pre-message tokens and per-message tokens.

    Messages alternate, starting with the initiator.
    """

    name: str
    initiator_pre: tuple[str, ...]
    responder_pre: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]


XK = HandshakePattern("XK", (), ("s",), (("e", "es"), ("e", "ee"), ("s", "se")))
"""``Noise_XK``: the client's static key travels in message 3 under a forward-secret key."""

XKHFS = HandshakePattern("XKhfs", (), ("s",), (("e", "es", "e1"), ("e", "ee", "ekem1"), ("s", "se")))
"""XK with the hfs KEM tokens: an ML-KEM-768 secret is mixed in before the client's ``s``."""

Encapsulate = Callable[[bytes], tuple[bytes, bytes]]


class HandshakeState:
    """Noise HandshakeState driven by a :class:`HandshakePattern`.

    Ephemeral keys (``e``, ``e1``) and the KEM encapsulation may be injected for
    test vectors; by default they are fresh and random.
    """

    __slots__ = (
        "_encapsulate",
        "_index",
        "_peer_keys",
        "e",
        "e1",
        "initiator",
        "pattern",
        "re",
        "re1",
        "rs",
        "s",
        "symmetric",
    )

    def __init__(
        self,
        protocol_name: bytes,
        pattern: HandshakePattern,
        initiator: bool,
        prologue: bytes = b"",
        s: KeyPair | None = None,
        e: KeyPair | None = None,
        rs: bytes | None = None,
        e1: KemKeyPair | None = None,
        encapsulate: Encapsulate = crypto.kem_encapsulate,
    ) -> None:
        self.symmetric = SymmetricState(protocol_name)
        self.pattern = pattern
        self.initiator = initiator
        self.s = s
        self.e = e
        self.rs = rs
        self.re: bytes | None = None
        self.e1 = e1
        self.re1: bytes | None = None
        self._encapsulate = encapsulate
        self._index = 0
        self._peer_keys: dict[bytes, X25519PublicKey] = {}
        self.symmetric.mix_hash(prologue)
        for owner_is_initiator, tokens in ((True, pattern.initiator_pre), (False, pattern.responder_pre)):
            for token in tokens:
                mine = owner_is_initiator == initiator
                if token == "s":
                    key = (self.s.public if self.s else None) if mine else self.rs
                elif token == "e":
                    key = (self.e.public if self.e else None) if mine else self.re
                else:
                    raise LocalProtocolError(f"unsupported pre-message token {token!r}")
                if key is None:
                    raise LocalProtocolError(f"pre-message key {token!r} missing")
                self.symmetric.mix_hash(key)

    def copy(self) -> HandshakeState:
        """An independent copy: read a message on it and keep it only if the whole message was good.

        The Noise specification (section 5.3) has a failed ``ReadMessage`` abandon the handshake;
        a responder that must survive forged or corrupted copies of a message reads each on a
        copy, so neither a bit flip on the path nor a malformed payload moves the real state.
        """
        twin = HandshakeState.__new__(HandshakeState)
        twin.pattern, twin.initiator, twin._encapsulate, twin._index = (
            self.pattern,
            self.initiator,
            self._encapsulate,
            self._index,
        )
        twin.s, twin.e, twin.rs, twin.re, twin.e1, twin.re1 = (
            self.s,
            self.e,
            self.rs,
            self.re,
            self.e1,
            self.re1,
        )
        twin.symmetric = self.symmetric.copy()
        twin._peer_keys = dict(self._peer_keys)
        return twin

    @property
    def complete(self) -> bool:
        return self._index >= len(self.pattern.messages)

    @property
    def handshake_hash(self) -> bytes:
        return self.symmetric.h

    @property
    def my_turn_to_write(self) -> bool:
        return (self._index % 2 == 0) == self.initiator

    def _dh(self, token: str) -> bytes:
        # token "xy": x is the initiator's key, y the responder's.
        local, remote = (token[0], token[1]) if self.initiator else (token[1], token[0])
        mine = self.e if local == "e" else self.s
        theirs = self.re if remote == "e" else self.rs
        if mine is None or theirs is None:
            raise LocalProtocolError(f"keys for {token!r} missing")
        peer = self._peer_keys.get(theirs)
        if peer is None:  # parse each peer key once: a handshake uses one twice
            peer = self._peer_keys[theirs] = crypto.load_public(theirs)
        return crypto.dh(mine, peer)

    def write_message(self, payload: bytes = b"") -> bytes:
        if self.complete:
            raise LocalProtocolError("handshake already complete")
        if not self.my_turn_to_write:
            raise LocalProtocolError("not this side's turn to write")
        sym = self.symmetric
        out = bytearray()
        for token in self.pattern.messages[self._index]:
            if token == "e":
                if self.e is None:
                    self.e = KeyPair.generate()
                out += self.e.public
                sym.mix_hash(self.e.public)
            elif token == "s":
                if self.s is None:
                    raise LocalProtocolError("static key missing")
                out += sym.encrypt_and_hash(self.s.public)
            elif token == "e1":
                if self.e1 is None:
                    self.e1 = KemKeyPair.generate()
                out += sym.encrypt_and_hash(self.e1.public)
            elif token == "ekem1":
                if self.re1 is None:
                    raise LocalProtocolError("peer KEM key missing")
                ciphertext, shared = self._encapsulate(self.re1)
                out += sym.encrypt_and_hash(ciphertext)
                sym.mix_key(shared)
            else:
                sym.mix_key(self._dh(token))
        out += sym.encrypt_and_hash(payload)
        self._index += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        if self.complete:
            raise LocalProtocolError("handshake already complete")
        if self.my_turn_to_write:
            raise LocalProtocolError("not this side's turn to read")
        sym = self.symmetric
        view = memoryview(message)
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(view):
                raise RemoteProtocolError("handshake message too short", "short")
            chunk = bytes(view[pos : pos + n])
            pos += n
            return chunk

        tag = TAGLEN if sym.cipher.has_key() else 0
        for token in self.pattern.messages[self._index]:
            if token == "e":
                self.re = take(DHLEN)
                sym.mix_hash(self.re)
            elif token == "s":
                self.rs = sym.decrypt_and_hash(take(DHLEN + tag))
            elif token == "e1":
                self.re1 = sym.decrypt_and_hash(take(KEM_PUBLIC_LEN + tag))
            elif token == "ekem1":
                if self.e1 is None:
                    raise LocalProtocolError("own KEM key missing")
                ciphertext = sym.decrypt_and_hash(take(KEM_CIPHERTEXT_LEN + tag))
                sym.mix_key(self.e1.decapsulate(ciphertext))
            else:
                sym.mix_key(self._dh(token))
            tag = TAGLEN if sym.cipher.has_key() else 0
        payload = sym.decrypt_and_hash(bytes(view[pos:]))
        self._index += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        if not self.complete:
            raise LocalProtocolError("handshake not complete")
        k1, k2 = self.symmetric.split()
        return CipherState(k1), CipherState(k2)
