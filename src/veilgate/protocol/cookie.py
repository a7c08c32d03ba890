"""Denial-of-service defence: mac1, mac2 and cookies (WireGuard's scheme, whitepaper 5.4.4-5.4.7).

- Every handshake initiation carries ``mac1 = MAC(HASH(LABEL_MAC1 || S_gw), msg[:mac1])``:
  only someone who knows the gateway's public key can make one, and the
  gateway checks it before any public-key operation.
- Under load the gateway also demands ``mac2 = MAC(cookie, msg[:mac2])`` where
  ``cookie = MAC(secret, source address)`` with a secret that changes every two
  minutes. A client without a valid cookie gets a cookie reply instead of a
  handshake response; the cookie in it is encrypted under a key derived from
  the gateway's public key with the initiation's mac1 as associated data, so
  only the sender of that initiation can use it.

The cookie reply's encryption: WireGuard uses XChaCha20-Poly1305, which
``cryptography`` does not offer. veilgate derives a one-time key
``k = BLAKE2s(key=HASH(LABEL_COOKIE || S_gw), data=nonce)`` from a random
24-byte nonce and seals with ChaCha20-Poly1305 under ``k`` and a zero nonce:
each key is used once, so random nonces never collide under one key.
"""

from __future__ import annotations

import collections
import hashlib
import hmac

from veilgate.protocol import crypto
from veilgate.protocol.constants import (
    COOKIE_NONCE_LEN,
    COOKIE_SECRET_LIFETIME,
    LABEL_COOKIE,
    LABEL_MAC1,
    RATELIMIT_BURST,
    RATELIMIT_PER_SOURCE,
    RATELIMIT_TABLE_MAX,
)
from veilgate.protocol.crypto import MAC_LEN
from veilgate.protocol.errors import DecryptError, RemoteProtocolError
from veilgate.protocol.messages import INIT_MAC1_OFFSET, INIT_MAC2_OFFSET, CookieReply

ZERO_MAC = bytes(MAC_LEN)


def mac1_key(gateway_public: bytes) -> bytes:
    return crypto.hash_(LABEL_MAC1, gateway_public)


def cookie_key(gateway_public: bytes) -> bytes:
    return crypto.hash_(LABEL_COOKIE, gateway_public)


def _one_time_key(key: bytes, nonce: bytes) -> bytes:
    return hashlib.blake2s(nonce, key=key).digest()


class CookieChecker:
    """Gateway side: verifies mac1/mac2, makes cookie replies."""

    def __init__(self, gateway_public: bytes) -> None:
        self._mac1_key = mac1_key(gateway_public)
        self._cookie_key = cookie_key(gateway_public)
        self._secret = b""
        self._secret_born = float("-inf")

    def check_mac1(self, msg: bytes) -> bool:
        expected = crypto.mac(self._mac1_key, msg[:INIT_MAC1_OFFSET])
        return hmac.compare_digest(expected, msg[INIT_MAC1_OFFSET:INIT_MAC2_OFFSET])

    def _cookie(self, source: bytes, now: float) -> bytes:
        if now - self._secret_born >= COOKIE_SECRET_LIFETIME:
            self._secret = crypto.random_bytes(32)
            self._secret_born = now
        return crypto.mac(self._secret, source)

    def check_mac2(self, msg: bytes, source: bytes, now: float) -> bool:
        cookie = self._cookie(source, now)
        expected = crypto.mac(cookie, msg[:INIT_MAC2_OFFSET])
        return hmac.compare_digest(expected, msg[INIT_MAC2_OFFSET:])

    def make_reply(self, msg: bytes, sender: int, source: bytes, now: float) -> bytes:
        cookie = self._cookie(source, now)
        nonce = crypto.random_bytes(COOKIE_NONCE_LEN)
        sealed = crypto.aead_encrypt(
            _one_time_key(self._cookie_key, nonce), 0, msg[INIT_MAC1_OFFSET:INIT_MAC2_OFFSET], cookie
        )
        return CookieReply(sender, nonce, sealed).encode()


class CookieGenerator:
    """Client side: adds mac1 (and mac2 once it holds a cookie) to initiations."""

    def __init__(self, gateway_public: bytes) -> None:
        self._mac1_key = mac1_key(gateway_public)
        self._cookie_key = cookie_key(gateway_public)
        self._cookie: bytes | None = None
        self._cookie_time = 0.0
        self._last_mac1: bytes | None = None

    def stamp(self, body: bytes, now: float) -> bytes:
        """``body`` is the initiation up to mac1; returns the message with mac1 and mac2."""
        m1 = crypto.mac(self._mac1_key, body)
        self._last_mac1 = m1
        msg = body + m1
        if self._cookie is not None and now - self._cookie_time < COOKIE_SECRET_LIFETIME - 5.0:
            return msg + crypto.mac(self._cookie, msg)
        return msg + ZERO_MAC

    def consume_reply(self, reply: CookieReply, now: float) -> None:
        if self._last_mac1 is None:
            raise RemoteProtocolError("cookie reply without an initiation", "unexpected")
        try:
            cookie = crypto.aead_decrypt(
                _one_time_key(self._cookie_key, reply.nonce), 0, self._last_mac1, reply.encrypted_cookie
            )
        except DecryptError as exc:
            raise RemoteProtocolError("cookie reply does not authenticate", "decrypt") from exc
        self._cookie = cookie
        self._cookie_time = now


def source_prefix(address: bytes) -> bytes:
    """The part of a packed source address that limits are keyed on: an IPv4 address, an IPv6 /64.

    One host controls a whole IPv6 /64 (SLAAC, privacy addresses) and every port of its
    address, so keying a limit on anything finer gives one host a fresh budget per address.
    """
    return address[:8] if len(address) == 16 else address


class RateLimiter:
    """Token buckets per key (a ``source_prefix``), in a bounded table that forgets the least recently used.

    When the table is full a new key evicts the least recently seen one instead of being
    refused: a flood of fresh keys costs each of them a token, never everyone else their budget.
    """

    def __init__(
        self,
        rate: float = RATELIMIT_PER_SOURCE,
        burst: float = RATELIMIT_BURST,
        table_max: int = RATELIMIT_TABLE_MAX,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.table_max = table_max
        self._buckets: collections.OrderedDict[bytes, tuple[float, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: bytes, now: float) -> bool:
        buckets = self._buckets
        entry = buckets.get(key)
        if entry is None:
            tokens = self.burst
            if len(buckets) >= self.table_max:
                buckets.popitem(last=False)
        else:
            tokens = min(self.burst, entry[0] + max(0.0, now - entry[1]) * self.rate)
            buckets.move_to_end(key)
        allowed = tokens >= 1.0
        buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed
