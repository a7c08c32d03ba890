"""Talking to the provider service from clients and gateways: pinned HTTPS, cached document, credentials.

Pinning: the configured fingerprint is the SHA-256 of the provider's TLS
certificate (aiohttp checks it on every connection); the document must be
signed by that certificate's Ed25519 key.

Through the tunnel: with ``device``, every socket of the request is bound to
that network device (``SO_BINDTODEVICE``), so the request leaves through the
tunnel or not at all; it never falls back to another route.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veilgate.credentials.epochs import (
    BlindCredential,
    CredentialRequest,
    EpochKeyChanged,
    EpochKeyLedger,
    EpochPublicKey,
)
from veilgate.provider.document import DocumentError, ProviderDocument, envelope_certificate, open_document

log = logging.getLogger("veilgate.provider")


LEDGER_FILE = "epoch-keys.json"


class ProviderUnavailable(Exception):  # noqa: N818 - a condition the caller reports, not a bug
    """The provider could not be reached or refused; the message says what is wrong."""


class ProviderInconsistent(ProviderUnavailable):
    """The provider's document contradicts an epoch key seen before (a possible per-user key)."""


@dataclass(frozen=True)
class FetchedDocument:
    document: ProviderDocument
    envelope: bytes
    certificate: bytes


def _fingerprint(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError("the provider fingerprint is the SHA-256 of its certificate: 64 hex digits")
    return raw


class ProviderClient:
    def __init__(
        self, url: str, fingerprint: str, cache_dir: Path | None = None, timeout: float = 10.0
    ) -> None:
        self.url = url.rstrip("/")
        self.pin = aiohttp.Fingerprint(_fingerprint(fingerprint))
        self.cache_dir = cache_dir
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        # Every epoch key seen: on disk next to the cached document for a client, in memory otherwise.
        self.ledger = self._load_ledger()

    def _session(self, device: str | None) -> aiohttp.ClientSession:
        if device is None:
            return aiohttp.ClientSession(timeout=self.timeout)
        connector = aiohttp.TCPConnector(socket_factory=_bound_to(device))
        return aiohttp.ClientSession(timeout=self.timeout, connector=connector)

    async def fetch_document(self, now: float, *, device: str | None = None) -> FetchedDocument:
        """The signed document (saved to the cache); with ``device``, fetched only through that device."""
        try:
            async with (
                self._session(device) as session,
                session.get(f"{self.url}/v1/provider", ssl=self.pin) as resp,
            ):
                if resp.status != 200:
                    raise ProviderUnavailable(f"provider answered HTTP {resp.status}")
                envelope = await resp.read()
        except aiohttp.ServerFingerprintMismatch:
            raise ProviderUnavailable(
                "the provider certificate does not match the pinned fingerprint (wrong server, or an attack)"
            ) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ProviderUnavailable(
                f"cannot reach the provider at {self.url}: {exc or type(exc).__name__}"
            ) from None
        fetched = self._open(envelope, now)
        self._check_keys(fetched)
        self._save(fetched)
        return fetched

    def _check_keys(self, fetched: FetchedDocument) -> None:
        try:
            new = self.ledger.record(fetched.document.epochs)
        except EpochKeyChanged as exc:
            log.error("%s", exc)
            raise ProviderInconsistent(str(exc)) from None
        if new and self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            path = self.cache_dir / LEDGER_FILE
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(self.ledger.to_json(), indent=1) + "\n")
            os.replace(tmp, path)

    def _load_ledger(self) -> EpochKeyLedger:
        if self.cache_dir is None:
            return EpochKeyLedger()
        path = self.cache_dir / LEDGER_FILE
        try:
            return EpochKeyLedger.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            return EpochKeyLedger()
        except (OSError, ValueError) as exc:
            # Refusing to start for good would be worse: report it, start afresh, protect from now on.
            log.error("the record of epoch keys seen (%s) is unreadable and starts afresh: %s", path, exc)
            return EpochKeyLedger()

    def cached_document(self, now: float) -> FetchedDocument | None:
        """The last fetched document, if still valid."""
        if self.cache_dir is None:
            return None
        try:
            envelope = (self.cache_dir / "provider-document.json").read_bytes()
        except OSError:
            return None
        try:
            fetched = self._open(envelope, now)
            self._check_keys(fetched)
        except (DocumentError, ProviderUnavailable):
            return None
        return fetched

    async def obtain_credential(
        self,
        epoch_key: EpochPublicKey,
        static_public: bytes,
        token: str | None = None,
        *,
        device: str | None = None,
    ) -> BlindCredential:
        """A blind credential for ``static_public``; with ``device``, obtained only through that device."""
        request = CredentialRequest(epoch_key, static_public)
        body: dict[str, object] = {
            "epoch": epoch_key.epoch,
            "blinded": base64.b64encode(request.blinded).decode(),
        }
        if token is not None:
            body["token"] = token
        try:
            async with (
                self._session(device) as session,
                session.post(f"{self.url}/v1/credential", json=body, ssl=self.pin) as resp,
            ):
                answer = await resp.read()
                if resp.status != 200:
                    reason = _error_text(answer)
                    raise ProviderUnavailable(
                        f"the provider refused a credential (HTTP {resp.status}: {reason})"
                    )
        except aiohttp.ServerFingerprintMismatch:
            raise ProviderUnavailable(
                "the provider's certificate does not match the pinned fingerprint"
            ) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ProviderUnavailable(
                f"cannot reach the provider at {self.url}: {exc or type(exc).__name__}"
            ) from None
        try:
            blind_signature = base64.b64decode(json.loads(answer)["blind_signature"], validate=True)
            return request.finalize(blind_signature)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ProviderUnavailable(
                f"the provider's answer is not a valid blind signature: {exc}"
            ) from None

    def _open(self, envelope: bytes, now: float) -> FetchedDocument:
        try:
            certificate = envelope_certificate(envelope)
        except DocumentError as exc:
            raise ProviderUnavailable(str(exc)) from None
        if _sha256(certificate) != self.pin.fingerprint:
            raise ProviderUnavailable("the document's certificate does not match the pinned fingerprint")
        key = x509.load_der_x509_certificate(certificate).public_key()
        if not isinstance(key, Ed25519PublicKey):
            raise ProviderUnavailable("the provider's certificate does not carry an Ed25519 key")
        try:
            return FetchedDocument(open_document(envelope, key, now), envelope, certificate)
        except DocumentError as exc:
            raise ProviderUnavailable(str(exc)) from None

    def _save(self, fetched: FetchedDocument) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / "provider-document.json.tmp"
        tmp.write_bytes(fetched.envelope)
        os.replace(tmp, self.cache_dir / "provider-document.json")


def _bound_to(device: str) -> Any:
    """aiohttp's socket factory for sockets that can leave only by ``device``."""
    name = device.encode()

    def factory(addr_info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto = addr_info[0], addr_info[1], addr_info[2]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, name)
        except OSError:
            sock.close()
            raise
        return sock

    return factory


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", "?"))
    except ValueError:
        return body[:100].decode(errors="replace")
