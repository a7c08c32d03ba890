"""Inputs `make fuzz` found that raised something other than the parser's documented error.

Each parser of untrusted bytes raises one error type with a reason; these inputs once raised
another (an AttributeError, a UnicodeDecodeError, ...), which a caller does not catch.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from veilgate.client.config import load_client_config
from veilgate.config import ConfigError, load_toml
from veilgate.credentials.blindrsa import BlindRSAError, BlindRSAPrivateKey, BlindRSAPublicKey
from veilgate.credentials.epochs import CredentialRequest, EpochKey, EpochVerifier, sign_blinded
from veilgate.gateway.config import load_gateway_config
from veilgate.protocol.errors import CredentialError
from veilgate.provider.config import load_provider_config
from veilgate.provider.document import DocumentError, ProviderDocument, envelope_certificate, open_document


@pytest.mark.parametrize("text", [b"1", b"[]", b'"document"', b"null", b"[" * 100_000 + b"]" * 100_000])
def test_a_provider_document_that_is_not_a_json_object_is_a_document_error(text: bytes) -> None:
    with pytest.raises(DocumentError):
        ProviderDocument.from_bytes(text)
    with pytest.raises(DocumentError):
        envelope_certificate(text)
    with pytest.raises(DocumentError):
        open_document(text, Ed25519PrivateKey.generate().public_key(), 0.0)


def test_an_epoch_key_of_an_unknown_type_is_refused_as_not_rsa() -> None:
    # A well-formed EC public key on a curve cryptography does not support (prime192v2).
    der = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    p256 = bytes.fromhex("06082a8648ce3d030107")  # the OID 1.2.840.10045.3.1.7
    unknown = der.replace(p256, p256[:-1] + b"\x02")
    with pytest.raises(BlindRSAError):
        BlindRSAPublicKey.from_der(unknown)
    doc = {
        "version": 1, "provider": "p", "issued_at": 0, "valid_until": 1, "epoch_length": 10,
        "gateways": [], "epochs": [{"epoch": 1, "public_key": base64.b64encode(unknown).decode()}],
    }  # fmt: skip
    with pytest.raises(DocumentError):
        ProviderDocument.from_bytes(json.dumps(doc).encode())


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf])
def test_blind_credentials_fail_closed_at_a_time_that_is_not_finite(now: float) -> None:
    key = EpochKey(5, BlindRSAPrivateKey.generate(2048))
    static = bytes(range(32))
    request = CredentialRequest(key.public, static)
    credential = request.finalize(sign_blinded(key, request.blinded)).encode()
    verifier = EpochVerifier([key.public], 86400)
    verifier.verify(credential, static, 5 * 86400 + 10.0)
    with pytest.raises(CredentialError) as refused:
        verifier.verify(credential, static, now)
    assert refused.value.reason == "expired"


@pytest.mark.parametrize("loader", [load_toml, load_gateway_config, load_client_config, load_provider_config])
def test_a_configuration_file_that_is_not_utf8_is_a_config_error(tmp_path: Path, loader: object) -> None:
    path = tmp_path / "veilgate.toml"
    path.write_bytes(b'[gateway]\nname = "\xfc"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        loader(path)  # type: ignore[operator]


@pytest.mark.parametrize("field", ["issued_at", "valid_until", "epoch_length"])
def test_a_provider_document_with_an_infinite_number_is_a_document_error(field: str) -> None:
    doc = {"version": 1, "provider": "p", "issued_at": 0, "valid_until": 1, "epoch_length": 10}
    doc |= {"gateways": [], "epochs": []}
    text = json.dumps(doc).replace(f'"{field}": ', f'"{field}": Infinity, "x": ')  # JSON as Python reads it
    with pytest.raises(DocumentError):
        ProviderDocument.from_bytes(text.encode())
