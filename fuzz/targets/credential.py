"""Ed25519 credentials: Credential.decode and CredentialVerifier.verify raise only CredentialError.

The first byte picks what the rest is (``byte % 3``): 0, a raw credential; 1, the 58-byte body of
one, which the harness signs with the trusted issuer's key so the fuzzer gets past the signature
to the window and key checks; 2, like 1 preceded by 8 bytes of ``now`` (a double: NaN and
infinities included) and 32 bytes of the static key the gateway saw.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import struct
from collections.abc import Callable

from common import CLIENT_KEY, NOW

from veilgate.credentials import Credential, CredentialError, CredentialVerifier, IssuerKey
from veilgate.credentials.ed25519 import BODY_LEN, SIGNING_CONTEXT

ISSUER = IssuerKey.from_bytes(hashlib.blake2s(b"fuzz issuer").digest())


def make() -> Callable[[bytes], None]:
    verifier = CredentialVerifier([ISSUER.public_key()])

    def one(data: bytes) -> None:
        if not data:
            return
        mode, rest = data[0] % 3, data[1:]
        now, static = NOW, CLIENT_KEY.public
        if mode == 2 and len(rest) >= 40:
            now = struct.unpack("<d", rest[:8])[0]
            static, rest = rest[8:40], rest[40:]
        if mode and len(rest) >= BODY_LEN:
            body = rest[:BODY_LEN]
            rest = body + ISSUER.sign(SIGNING_CONTEXT + body) + rest[BODY_LEN:]
        with contextlib.suppress(CredentialError):
            Credential.decode(rest)
        try:
            cred = verifier.verify(rest, static, now)
        except CredentialError:
            return
        if cred.encode() != rest or cred.static_public != static:
            raise AssertionError("credential: accepted but not what was sent")
        if (
            math.isnan(now)
            or not cred.not_before - verifier.max_skew <= now < cred.not_after + verifier.max_skew
        ):
            raise AssertionError(f"credential: accepted outside its window at {now}")

    return one
