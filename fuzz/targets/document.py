"""The provider document: open_document, ProviderDocument.from_bytes and envelope_certificate raise
only DocumentError.

The first byte picks what the rest is (``byte % 3``): 0, an envelope (JSON with the document, its
signature and the certificate); 1, the document's JSON itself; 2, document bytes the harness signs
with the pinned provider key, so open_document gets past the signature to the parser.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veilgate.provider.document import DocumentError, ProviderDocument, envelope_certificate, open_document

PROVIDER_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.blake2s(b"fuzz provider").digest())
CERTIFICATE = b"fuzz certificate"
NOW = 1_700_000_000.0


def envelope(document: bytes) -> bytes:
    return json.dumps(
        {
            "document": base64.b64encode(document).decode(),
            "signature": base64.b64encode(PROVIDER_KEY.sign(document)).decode(),
            "certificate": base64.b64encode(CERTIFICATE).decode(),
        }
    ).encode()


def make() -> Callable[[bytes], None]:
    public = PROVIDER_KEY.public_key()

    def one(data: bytes) -> None:
        if not data:
            return
        mode, rest = data[0] % 3, data[1:]
        if mode == 1:
            try:
                doc = ProviderDocument.from_bytes(rest)
            except DocumentError:
                return
            if ProviderDocument.from_bytes(doc.to_bytes()).to_bytes() != doc.to_bytes():
                raise AssertionError("provider document: does not survive to_bytes/from_bytes")
            return
        env = rest if mode == 0 else envelope(rest)
        with contextlib.suppress(DocumentError):
            envelope_certificate(env)
        try:
            open_document(env, public, NOW)
        except DocumentError:
            return

    return one
