"""The provider document: what a client needs to know, signed by the provider's key.

It lists the gateways (host, addresses, ports per transport, static public
key, TLS name and key pin, location, load hint), the issuer's epoch public keys with their epochs,
and the document's own validity. It is JSON, signed with Ed25519 over its
exact bytes; the envelope carries both::

    {"document": "<base64 of the JSON bytes>", "signature": "<base64 Ed25519 signature>",
     "certificate": "<base64 DER of the provider's TLS certificate>"}

The provider's Ed25519 key is the key of its TLS certificate too, so the one
fingerprint a client is configured with (``SHA-256 of the certificate``) pins
both the HTTPS connection and the document: the client checks the envelope's
certificate against the fingerprint and the signature against its key, so a
cached document can be checked again offline.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from veilgate.credentials.blindrsa import BlindRSAError, BlindRSAPublicKey
from veilgate.credentials.epochs import EpochPublicKey


class DocumentError(ValueError):
    pass


@dataclass(frozen=True)
class GatewayEntry:
    name: str
    host: str
    public_key: bytes
    udp_port: int
    tcp_port: int
    ipv6: str | None = None
    location: str = ""
    load: float = 0.0
    tls_port: int = 0
    """The TLS carrier's port; 0 (with empty name and pin): the gateway has no TLS carrier."""
    tls_name: str = ""
    tls_pin: str = ""
    """SHA-256 of the gateway's TLS key (SubjectPublicKeyInfo), 64 hex digits."""
    obfuscation: bool = False
    """Whether the gateway obfuscates its wire format (docs/protocol.md 14)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "ipv6": self.ipv6,
            "public_key": base64.b64encode(self.public_key).decode(),
            "udp_port": self.udp_port,
            "tcp_port": self.tcp_port,
            "location": self.location,
            "load": self.load,
            "tls_port": self.tls_port,
            "tls_name": self.tls_name,
            "tls_pin": self.tls_pin,
            "obfuscation": self.obfuscation,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GatewayEntry:
        key = base64.b64decode(d["public_key"], validate=True)
        if len(key) != 32:
            raise DocumentError("gateway public key is not 32 bytes")
        tls_pin = str(d.get("tls_pin", ""))
        if tls_pin and (len(tls_pin) != 64 or any(ch not in "0123456789abcdef" for ch in tls_pin)):
            raise DocumentError("gateway tls_pin is not 64 lowercase hex digits")
        return cls(
            str(d["name"]),
            str(d["host"]),
            key,
            int(d["udp_port"]),
            int(d["tcp_port"]),
            d.get("ipv6"),
            str(d.get("location", "")),
            float(d.get("load", 0.0)),
            int(d.get("tls_port", 0)),
            str(d.get("tls_name", "")),
            tls_pin,
            d.get("obfuscation", False) is True,
        )


@dataclass(frozen=True)
class ProviderDocument:
    provider: str
    issued_at: int
    valid_until: int
    epoch_length: int
    gateways: tuple[GatewayEntry, ...]
    epochs: tuple[EpochPublicKey, ...]
    access: str = "open"

    def to_bytes(self) -> bytes:
        body = {
            "version": 1,
            "provider": self.provider,
            "issued_at": self.issued_at,
            "valid_until": self.valid_until,
            "epoch_length": self.epoch_length,
            "access": self.access,
            "gateways": [g.to_json() for g in self.gateways],
            "epochs": [
                {"epoch": e.epoch, "public_key": base64.b64encode(e.key.to_der()).decode()}
                for e in self.epochs
            ],
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ProviderDocument:
        try:
            d = json.loads(data)
            if not isinstance(d, dict):
                raise DocumentError("malformed provider document: not a JSON object")
            if d.get("version") != 1:
                raise DocumentError(f"provider document version {d.get('version')!r} not supported")
            epochs = tuple(_epoch_key(e) for e in d["epochs"])
            seen: set[int] = set()
            for e in epochs:
                if e.epoch in seen:
                    # One key per epoch for everyone: several would let the issuer tell users apart.
                    raise DocumentError(
                        f"the provider document has more than one key for epoch {e.epoch}; refused"
                    )
                seen.add(e.epoch)
            return cls(
                str(d["provider"]),
                int(d["issued_at"]),
                int(d["valid_until"]),
                int(d["epoch_length"]),
                tuple(GatewayEntry.from_json(g) for g in d["gateways"]),
                epochs,
                str(d.get("access", "open")),
            )
        except (KeyError, TypeError, ValueError, OverflowError, binascii.Error, RecursionError) as exc:
            if isinstance(exc, DocumentError):
                raise
            raise DocumentError(f"malformed provider document: {exc}") from exc

    def epoch_key(self, epoch: int) -> EpochPublicKey | None:
        for e in self.epochs:
            if e.epoch == epoch:
                return e
        return None


def _epoch_key(e: dict[str, Any]) -> EpochPublicKey:
    epoch = int(e["epoch"])
    key = BlindRSAPublicKey.from_der(base64.b64decode(e["public_key"]))
    try:
        return EpochPublicKey(epoch, key)
    except BlindRSAError as exc:
        raise DocumentError(f"the provider document's key for epoch {epoch} is refused: {exc}") from None


def sign_document(doc: ProviderDocument, key: Ed25519PrivateKey, certificate: bytes) -> bytes:
    """The envelope: the document's bytes, their signature, and the certificate whose key signed them."""
    data = doc.to_bytes()
    return json.dumps(
        {
            "document": base64.b64encode(data).decode(),
            "signature": base64.b64encode(key.sign(data)).decode(),
            "certificate": base64.b64encode(certificate).decode(),
        }
    ).encode()


def envelope_certificate(envelope: bytes) -> bytes:
    try:
        return base64.b64decode(json.loads(envelope)["certificate"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error, RecursionError) as exc:  # Recursion: deep JSON
        raise DocumentError(f"malformed provider document envelope: {exc}") from exc


def open_document(envelope: bytes, key: Ed25519PublicKey, now: float) -> ProviderDocument:
    """Verify the envelope's signature with the pinned provider key and the document's validity."""
    try:
        outer = json.loads(envelope)
        data = base64.b64decode(outer["document"], validate=True)
        signature = base64.b64decode(outer["signature"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error, RecursionError) as exc:  # Recursion: deep JSON
        raise DocumentError(f"malformed provider document envelope: {exc}") from exc
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise DocumentError("the provider document's signature does not verify with the pinned key") from None
    doc = ProviderDocument.from_bytes(data)
    if now > doc.valid_until:
        raise DocumentError("the provider document has expired")
    return doc
