"""Blind (RSA, per-epoch) credentials: BlindCredential.decode and EpochVerifier.verify raise only
CredentialError.

The first byte picks what the rest is (``byte % 3``): 0, a raw credential; 1, a change
(``common.xor_onto``) to a valid credential for the trusted epoch key; 2, 8 bytes of ``now`` (a
double: NaN and infinities included) and 32 bytes of the static key the gateway saw, against
the valid credential.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from pathlib import Path

from common import CLIENT_KEY, xor_onto

from veilgate.credentials.blindrsa import BlindRSAPrivateKey
from veilgate.credentials.epochs import (
    BlindCredential,
    CredentialRequest,
    EpochKey,
    EpochVerifier,
    sign_blinded,
)
from veilgate.protocol.errors import CredentialError

EPOCH_LENGTH = 86400
EPOCH = 20000
NOW = EPOCH * EPOCH_LENGTH + 3600.0
KEY = EpochKey(
    EPOCH, BlindRSAPrivateKey.from_der((Path(__file__).parents[1] / "data" / "epoch-key.der").read_bytes())
)


def valid_credential() -> bytes:
    request = CredentialRequest(KEY.public, CLIENT_KEY.public)
    return request.finalize(sign_blinded(KEY, request.blinded)).encode()


def make() -> Callable[[bytes], None]:
    verifier = EpochVerifier([KEY.public], EPOCH_LENGTH)
    valid = valid_credential()

    def one(data: bytes) -> None:
        if not data:
            return
        mode, rest = data[0] % 3, data[1:]
        now, static, credential = NOW, CLIENT_KEY.public, rest
        if mode == 1:
            credential = xor_onto(valid, rest)
        elif mode == 2:
            if len(rest) < 40:
                return
            now, static, credential = struct.unpack("<d", rest[:8])[0], rest[8:40], valid
        with contextlib.suppress(CredentialError):
            BlindCredential.decode(credential)
        try:
            cred = verifier.verify(credential, static, now)
        except CredentialError:
            return
        if cred.encode() != credential or cred.static_public != static:
            raise AssertionError("blind credential: accepted but not what was sent")
        # Valid in its epoch and the next one, give or take the verifier's skew.
        skew = verifier.max_skew
        if not EPOCH * EPOCH_LENGTH - skew <= now < (EPOCH + 2) * EPOCH_LENGTH + skew:
            raise AssertionError(f"blind credential: accepted at {now}, outside its epoch")

    return one
