"""The provider service: HTTPS API for the signed provider document and blind credential issuance.

``GET /v1/provider`` returns the signed document. ``POST /v1/credential``
takes ``{"epoch": E, "blinded": base64, "token": "..."}`` and returns
``{"blind_signature": base64}``: an RSA private-key operation with epoch E's
key on bytes the service cannot read (RFC 9474). The service keeps no record
of what it signed; it logs counts and refusal reasons only. In ``token``
access mode each invite token may obtain a bounded number of credentials per
epoch (counted in memory); in ``open`` mode issuance is rate-limited per
source (an IPv4 address or an IPv6 /64) in a bounded table that forgets the
least recently seen source. A request that is malformed or cannot be signed
is refused before it costs a token use or a place in that table.

Epoch keys live in the state folder (one RSA key per epoch): the current and
the next epoch's keys exist at all times, and a key is deleted once its epoch
is more than one epoch in the past.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import datetime
import hashlib
import ipaddress
import json
import logging
import os
import ssl
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, cast

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from veilgate.config import ConfigError
from veilgate.credentials.blindrsa import BlindRSAError, BlindRSAPrivateKey
from veilgate.credentials.epochs import MIN_MODULUS_BITS, EpochKey, epoch_of, sign_blinded
from veilgate.monitor.metrics import Metric, MetricsServer, families, split_counters
from veilgate.protocol.cookie import RateLimiter, source_prefix
from veilgate.provider.config import ProviderConfig, load_provider_config
from veilgate.provider.document import ProviderDocument, sign_document
from veilgate.systemd.notify import Service, changed_fields, set_log_level
from veilgate.systemd.privileges import run_as

log = logging.getLogger("veilgate.provider")


# Bounds on a credential request: an epoch is a u64 (the credential's wire
# format), a blinded message is one RSA block (at most 4096 bits here; 8192
# leaves room), a token is a short line from the tokens file.
MAX_EPOCH = 2**64 - 1
MAX_BLINDED_BYTES = 1024
MAX_TOKEN_CHARS = 1024

REFUSALS = ("malformed", "no-epoch-key", "bad-blinded", "invalid-token", "token-used-up", "rate-limited")
"""The kinds of refusal, each reported from the start (at 0)."""


class RequestError(ValueError):
    """A malformed credential request; ``reason`` says briefly what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_credential_request(body: bytes) -> tuple[int, bytes, str | None]:
    """Parse the body of ``POST /v1/credential`` into (epoch, blinded message, token or None).

    Pure and total: any input either parses or raises RequestError (never
    anything else), so the handler and a fuzzer can feed it arbitrary bytes.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # ValueError covers JSONDecodeError, UnicodeDecodeError, huge ints
        raise RequestError("not JSON") from None
    if not isinstance(data, dict):
        raise RequestError("not a JSON object")
    epoch = data.get("epoch")
    if epoch is None:
        raise RequestError("missing epoch")
    if type(epoch) is not int:  # bool is an int subclass; floats are refused too
        raise RequestError("epoch is not an integer")
    if not 0 <= epoch <= MAX_EPOCH:
        raise RequestError("epoch out of range")
    text = data.get("blinded")
    if text is None:
        raise RequestError("missing blinded")
    if not isinstance(text, str):
        raise RequestError("blinded is not a string")
    if len(text) > (MAX_BLINDED_BYTES + 2) // 3 * 4:
        raise RequestError("blinded is too long")
    try:
        blinded = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise RequestError("blinded is not base64") from None
    if not blinded:
        raise RequestError("blinded is empty")
    token = data.get("token")
    if token is not None:
        if not isinstance(token, str):
            raise RequestError("token is not a string")
        if len(token) > MAX_TOKEN_CHARS:
            raise RequestError("token is too long")
    return epoch, blinded, token


class Refusal(NamedTuple):
    status: int
    reason: str
    kind: str
    """A short fixed name of the reason, for the counters (``refused-<kind>``)."""


def _source_key(remote: str | None) -> bytes:
    """The open-mode limiter's key: the client's IPv4 address or IPv6 /64 (``source_prefix``)."""
    try:
        return source_prefix(ipaddress.ip_address(remote or "").packed)
    except ValueError:
        return b"?"  # not an IP peer (never for TCP): one shared budget


def certificate_fingerprint(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def init_identity(state_dir: Path) -> str:
    """Make the provider's Ed25519 key and self-signed certificate if missing; returns the fingerprint."""
    state_dir.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = state_dir / "provider.key", state_dir / "provider.crt"
    if not key_path.exists():
        key = Ed25519PrivateKey.generate()
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "veilgate provider")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, None)
        )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return certificate_fingerprint(cert_path.read_bytes())


class ProviderService:
    def __init__(self, config: ProviderConfig, *, clock: Callable[[], float] = time.time) -> None:
        if config.rsa_bits < MIN_MODULUS_BITS:
            raise ValueError(f"rsa_bits {config.rsa_bits}: epoch keys need at least {MIN_MODULUS_BITS} bits")
        self.config = config
        self.clock = clock
        self.fingerprint = init_identity(config.state_dir)
        key = serialization.load_pem_private_key(
            (config.state_dir / "provider.key").read_bytes(), password=None
        )
        assert isinstance(key, Ed25519PrivateKey)
        self.signing_key = key
        cert = x509.load_pem_x509_certificate((config.state_dir / "provider.crt").read_bytes())
        self.certificate = cert.public_bytes(serialization.Encoding.DER)
        self.epoch_dir = config.state_dir / "epochs"
        self.epoch_dir.mkdir(exist_ok=True)
        self.keys: dict[int, EpochKey] = {}
        self.envelope = b""
        self.counters: Counter[str] = Counter()
        self._token_uses: dict[tuple[str, int], int] = {}
        self._ratelimit = RateLimiter(
            rate=config.open_rate_per_minute / 60.0, burst=config.open_rate_per_minute
        )
        self.epoch_issued = 0
        """Credentials issued since the current epoch began."""
        self.started = time.time()
        self._runner: web.AppRunner | None = None
        self._rotation: asyncio.Task[None] | None = None
        self._status_server: asyncio.AbstractServer | None = None
        self._metrics: MetricsServer | None = None
        self.service: Service | None = None
        """Under a service manager: the privilege drop, readiness, watchdog and reload after ``start``."""
        self.rotate()

    # ------------------------------------------------------------ keys and document

    def _load_or_make(self, epoch: int) -> EpochKey:
        path = self.epoch_dir / f"{epoch}.der"
        if path.exists():
            return EpochKey(epoch, BlindRSAPrivateKey.from_der(path.read_bytes()))
        key = EpochKey(epoch, BlindRSAPrivateKey.generate(self.config.rsa_bits))
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.key.to_der())
        os.replace(tmp, path)
        return key

    def rotate(self) -> None:
        """Keep the keys of the previous, current and next epoch; delete older ones; re-sign the document."""
        now = self.clock()
        current = epoch_of(now, self.config.epoch_length)
        wanted = {current - 1, current, current + 1}
        for epoch in sorted(wanted):
            if epoch not in self.keys and (epoch >= current or (self.epoch_dir / f"{epoch}.der").exists()):
                self.keys[epoch] = self._load_or_make(epoch)
        for epoch in [e for e in self.keys if e not in wanted]:
            del self.keys[epoch]
        for path in self.epoch_dir.glob("*.der"):
            with contextlib.suppress(ValueError):
                if int(path.stem) < current - 1:
                    path.unlink()
        length = self.config.epoch_length
        doc = ProviderDocument(
            provider=self.config.name,
            issued_at=int(now),
            valid_until=(current + 2) * length,
            epoch_length=length,
            gateways=tuple(self.config.gateways),
            epochs=tuple(self.keys[e].public for e in sorted(self.keys)),
            access=self.config.access,
        )
        self.envelope = sign_document(doc, self.signing_key, self.certificate)
        if current != getattr(self, "_current", None):
            self.epoch_issued = 0
        self._current = current

    async def _rotation_loop(self) -> None:
        while True:
            length = self.config.epoch_length
            now = self.clock()
            await asyncio.sleep(min(60.0, max(0.5, (epoch_of(now, length) + 1) * length - now + 0.05)))
            self.rotate()

    # ------------------------------------------------------------ HTTP

    async def handle_document(self, request: web.Request) -> web.Response:
        self.counters["documents"] += 1
        return web.Response(body=self.envelope, content_type="application/json")

    def admit(self, body: bytes, remote: str | None, now: float) -> tuple[EpochKey, bytes] | Refusal:
        """Decide on a credential request: (epoch key, blinded message) to sign, or a Refusal.

        Everything that is wrong with the request itself is refused before the
        access check, so malformed or unsignable bodies never spend an invite
        token's use nor take a place (or a token) in the open-mode rate limiter.
        """
        try:
            epoch, blinded, token = parse_credential_request(body)
        except RequestError as exc:
            return Refusal(400, f"malformed request: {exc.reason}", "malformed")
        key = self.keys.get(epoch)
        if key is None or epoch < self._current:
            return Refusal(404, "no issuing key for that epoch", "no-epoch-key")
        public = key.key.public
        if len(blinded) != public.k_len or int.from_bytes(blinded, "big") >= public.n:
            return Refusal(
                400, "blinded message is not one block below the epoch key's modulus", "bad-blinded"
            )
        if self.config.access == "token":
            if token is None or token not in self.config.tokens:
                return Refusal(403, "invalid token", "invalid-token")
            uses = self._token_uses.get((token, epoch), 0)
            if uses >= self.config.credentials_per_token_per_epoch:
                return Refusal(429, "token used up for this epoch", "token-used-up")
            self._token_uses[(token, epoch)] = uses + 1
        elif not self._ratelimit.allow(_source_key(remote), now):
            return Refusal(429, "rate limited", "rate-limited")
        return key, blinded

    async def handle_credential(self, request: web.Request) -> web.Response:
        decision = self.admit(await request.read(), request.remote, self.clock())
        if isinstance(decision, Refusal):
            return self._refuse(decision)
        key, blinded = decision
        try:
            blind_signature = await asyncio.get_running_loop().run_in_executor(
                None, sign_blinded, key, blinded
            )
        except BlindRSAError:
            return self._refuse(Refusal(400, "blinded message refused", "sign-failed"))
        self.counters["issued"] += 1
        self.epoch_issued += 1
        return web.json_response({"blind_signature": base64.b64encode(blind_signature).decode()})

    def _refuse(self, refusal: Refusal) -> web.Response:
        self.counters["refused-" + refusal.kind] += 1
        log.info("credential request refused: %s", refusal.reason)
        return web.json_response({"error": refusal.reason}, status=refusal.status)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/v1/provider", self.handle_document)
        app.router.add_post("/v1/credential", self.handle_credential)
        return app

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.config.state_dir / "provider.crt", self.config.state_dir / "provider.key")
        return ctx

    # ------------------------------------------------------------ status and metrics

    def status(self) -> dict[str, object]:
        """Aggregate figures only: counts and refusal reasons, nothing about who asked."""
        _, refused, _ = split_counters(self.counters)
        return {
            "role": "provider",
            "uptime": round(time.time() - self.started, 1),
            "access": self.config.access,
            "epoch": self._current,
            "epoch_length": self.config.epoch_length,
            "credentials_issued_this_epoch": self.epoch_issued,
            "credentials_issued": self.counters["issued"],
            "documents_served": self.counters["documents"],
            "refused": refused,
        }

    def metrics(self) -> list[Metric]:
        status = self.status()
        refused = cast(dict[str, int], status["refused"])
        return families(
            "veilgate_provider_",
            [
                ("gauge", "epoch", "The current epoch", self._current),
                (
                    "counter",
                    "epoch_credentials_issued",
                    "Credentials issued in the current epoch (from 0 at each epoch)",
                    self.epoch_issued,
                ),
                (
                    "counter",
                    "credentials_issued",
                    "Credentials issued since the start",
                    self.counters["issued"],
                ),
                (
                    "counter",
                    "requests_refused",
                    "Credential requests refused",
                    dict.fromkeys(REFUSALS, 0) | refused,
                    "reason",
                ),
                ("counter", "documents_served", "Provider documents served", self.counters["documents"]),
            ],
        )

    async def _on_status(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(self.status()).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    async def _serve_status(self, path: Path) -> None:
        """Answer ``status()`` as one JSON line on a Unix socket only its owner can open."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._status_server = await asyncio.start_unix_server(self._on_status, path=str(path))
        os.chmod(path, 0o600)

    # ------------------------------------------------------------ running

    async def start(self) -> None:
        # access_log=None: the HTTP access log would tie source addresses to requests.
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.listen, self.config.port, ssl_context=self.ssl_context())
        await site.start()
        self._rotation = asyncio.ensure_future(self._rotation_loop())
        if self.config.status_socket is not None:
            await self._serve_status(self.config.status_socket)
        if self.config.metrics_listen is not None:
            self._metrics = MetricsServer(self.config.metrics_listen, self.metrics)
            await self._metrics.start()
        log.info(
            "provider up on %s:%d (access %s, epoch %d s); fingerprint %s",
            self.config.listen,
            self.config.port,
            self.config.access,
            self.config.epoch_length,
            self.fingerprint,
        )

    async def stop(self) -> None:
        if self._metrics is not None:
            await self._metrics.stop()
            self._metrics = None
        if self._status_server is not None:
            self._status_server.close()
            self._status_server = None
            if self.config.status_socket is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.config.status_socket.unlink()
        if self._rotation is not None:
            self._rotation.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def run(self) -> None:
        import signal  # noqa: PLC0415

        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            if self.service is not None:
                self.service.started(loop)
            await stop.wait()
        finally:
            if self.service is not None:
                self.service.stopping()
            await self.stop()
            log.info("provider stopped; issued %d credentials", self.counters["issued"])

    # ------------------------------------------------------------ reload and status

    RELOADABLE = frozenset(
        {"name", "gateways", "tokens", "credentials_per_token_per_epoch", "open_rate_per_minute", "log_level"}
    )
    """What a reload applies to the running service: the document is signed again at once."""

    def reload(self) -> None:
        """Read the configuration file (and its tokens file) again; apply the gateway list and loads,
        the tokens and limits, the log level. A bad file changes nothing."""
        if self.config.source is None:
            return
        try:
            new = load_provider_config(self.config.source)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return
        changes = changed_fields(self.config, new, set(self.RELOADABLE), "provider")
        self.config = dataclasses.replace(self.config, **changes)  # type: ignore[arg-type]
        if "log_level" in changes:
            set_log_level(new.log_level)
        if "open_rate_per_minute" in changes:
            rate = new.open_rate_per_minute
            self._ratelimit = RateLimiter(rate=rate / 60.0, burst=rate)
        if "tokens" in changes:  # uses of tokens no longer listed are forgotten
            self._token_uses = {k: v for k, v in self._token_uses.items() if k[0] in new.tokens}
        if changes.keys() & {"name", "gateways"}:
            self.rotate()
        log.info("configuration reloaded%s", ": " + ", ".join(sorted(changes)) if changes else ", no change")

    def summary(self) -> str:
        """One line for the service manager: counts only."""
        refused = sum(v for k, v in self.counters.items() if k.startswith("refused-"))
        return (
            f"{self.counters['issued']} credentials issued, {self.counters['documents']} documents served, "
            f"{refused} requests refused, {len(self.config.gateways)} gateways listed"
        )


def run_provider(config: ProviderConfig) -> int:
    # After start the service listens on a bound socket and writes only its state folder (the next
    # epoch's key) and its status socket: no capability is kept.
    own: tuple[Path, ...] = (config.state_dir, config.state_dir / "epochs")
    if config.status_socket is not None:
        own += (config.status_socket.parent,)
    user = run_as(config.user, set(), own, source=config.source, field="provider.user")
    service = ProviderService(config)
    service.service = Service("provider", user, service.reload, service.summary)
    asyncio.run(service.run())
    return 0
