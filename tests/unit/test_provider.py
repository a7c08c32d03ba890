"""The provider service on loopback: signed document, pinning, issuance, access modes, cache, rotation."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.fakes import free_port
from veilgate.config import ConfigError
from veilgate.credentials.epochs import EpochVerifier, epoch_of
from veilgate.protocol.crypto import KeyPair
from veilgate.provider.client import ProviderClient, ProviderUnavailable
from veilgate.provider.config import ProviderConfig, load_provider_config
from veilgate.provider.document import (
    DocumentError,
    GatewayEntry,
    ProviderDocument,
    open_document,
    sign_document,
)
from veilgate.provider.service import ProviderService

GW = GatewayEntry("gw1", "127.0.0.1", bytes(range(32)), 51820, 443, None, "here", 0.2)


def make_service(tmp: Path, port: int, **kw: object) -> ProviderService:
    cfg = ProviderConfig(
        name="test",
        state_dir=tmp / "state",
        listen="127.0.0.1",
        port=port,
        epoch_length=60,
        rsa_bits=2048,
        gateways=[GW],
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return ProviderService(cfg)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def run(loop: asyncio.AbstractEventLoop, coro: object) -> object:
    return loop.run_until_complete(coro)  # type: ignore[arg-type]


def test_document_issuance_and_verification(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        svc = make_service(tmp_path, 18501)
        await svc.start()
        try:
            client = ProviderClient("https://127.0.0.1:18501", svc.fingerprint, tmp_path / "cache")
            fetched = await client.fetch_document(time.time())
            doc = fetched.document
            assert doc.gateways == (GW,) and doc.access == "open"
            current = epoch_of(time.time(), 60)
            assert [e.epoch for e in doc.epochs] == [current, current + 1]
            key = KeyPair.generate()
            epoch_key = doc.epoch_key(current)
            assert epoch_key is not None
            cred = await client.obtain_credential(epoch_key, key.public)
            assert EpochVerifier(doc.epochs, 60).verify(cred.encode(), key.public, time.time()) == cred
            assert svc.counters["issued"] == 1
            # A client pinned to another fingerprint refuses the server.
            with pytest.raises(ProviderUnavailable, match="pinned fingerprint"):
                await ProviderClient("https://127.0.0.1:18501", "ab" * 32).fetch_document(time.time())
            # Nothing about the client is kept: the state folder holds the provider's own keys only.
            names = sorted(p.name for p in (tmp_path / "state").rglob("*") if p.is_file())
            assert names == sorted(["provider.key", "provider.crt", f"{current}.der", f"{current + 1}.der"])
        finally:
            await svc.stop()

    run(loop, scenario())


def test_cached_document_when_the_provider_is_down(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        svc = make_service(tmp_path, 18502)
        await svc.start()
        client = ProviderClient("https://127.0.0.1:18502", svc.fingerprint, tmp_path / "cache")
        await client.fetch_document(time.time())
        await svc.stop()
        with pytest.raises(ProviderUnavailable, match="cannot reach the provider"):
            await client.fetch_document(time.time())
        cached = client.cached_document(time.time())
        assert cached is not None and cached.document.gateways == (GW,)
        assert client.cached_document(time.time() + 10 * 60) is None  # expired
        other = ProviderClient("https://127.0.0.1:18502", "cd" * 32, tmp_path / "cache")
        assert other.cached_document(time.time()) is None  # the cache is checked against the pin too

    run(loop, scenario())


def test_token_access_and_refusals(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        svc = make_service(
            tmp_path, 18503, access="token", tokens=frozenset({"invite-1"}), credentials_per_token_per_epoch=2
        )
        await svc.start()
        try:
            client = ProviderClient("https://127.0.0.1:18503", svc.fingerprint)
            doc = (await client.fetch_document(time.time())).document
            # The epoch the document was signed in: it holds that epoch's key and the next one's,
            # also when the test runs across an epoch boundary.
            epoch_key = doc.epoch_key(epoch_of(doc.issued_at, 60))
            assert epoch_key is not None
            key = KeyPair.generate()
            with pytest.raises(ProviderUnavailable, match="HTTP 403"):
                await client.obtain_credential(epoch_key, key.public)
            with pytest.raises(ProviderUnavailable, match="HTTP 403"):
                await client.obtain_credential(epoch_key, key.public, "wrong")
            for _ in range(2):
                await client.obtain_credential(epoch_key, KeyPair.generate().public, "invite-1")
            with pytest.raises(ProviderUnavailable, match="HTTP 429"):
                await client.obtain_credential(epoch_key, key.public, "invite-1")
            next_key = doc.epoch_key(epoch_key.epoch + 1)
            assert next_key is not None
        finally:
            await svc.stop()

    run(loop, scenario())


def test_open_access_is_rate_limited(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        svc = make_service(tmp_path, 18504, open_rate_per_minute=3)
        await svc.start()
        try:
            client = ProviderClient("https://127.0.0.1:18504", svc.fingerprint)
            doc = (await client.fetch_document(time.time())).document
            # The epoch the document was signed in: it holds that epoch's key and the next one's,
            # also when the test runs across an epoch boundary.
            epoch_key = doc.epoch_key(epoch_of(doc.issued_at, 60))
            assert epoch_key is not None
            results = []
            for _ in range(5):
                try:
                    await client.obtain_credential(epoch_key, KeyPair.generate().public)
                    results.append("ok")
                except ProviderUnavailable as exc:
                    results.append("429" if "429" in str(exc) else str(exc))
            assert results == ["ok", "ok", "ok", "429", "429"]
        finally:
            await svc.stop()

    run(loop, scenario())


def test_status_socket_and_metrics_hold_counts_only(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    metrics_port = free_port()

    async def scenario() -> None:
        svc = make_service(
            tmp_path,
            18506,
            epoch_length=86400,
            access="token",
            tokens=frozenset({"invite-1"}),
            credentials_per_token_per_epoch=1,
            status_socket=tmp_path / "provider.sock",
            metrics_listen=("127.0.0.1", metrics_port),
        )
        await svc.start()
        try:
            client = ProviderClient("https://127.0.0.1:18506", svc.fingerprint)
            doc = (await client.fetch_document(time.time())).document
            epoch_key = doc.epoch_key(epoch_of(doc.issued_at, 86400))
            assert epoch_key is not None
            await client.obtain_credential(epoch_key, KeyPair.generate().public, "invite-1")
            for token in ("invite-1", "wrong"):
                with pytest.raises(ProviderUnavailable):
                    await client.obtain_credential(epoch_key, KeyPair.generate().public, token)
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "provider.sock"))
            status = json.loads(await reader.readline())
            writer.close()
            assert (tmp_path / "provider.sock").stat().st_mode & 0o777 == 0o600
            assert status["role"] == "provider" and status["documents_served"] == 1
            assert status["credentials_issued"] == status["credentials_issued_this_epoch"] == 1
            assert status["refused"] == {"token-used-up": 1, "invalid-token": 1}
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{metrics_port}/metrics") as response,
            ):
                text = await response.text()
            samples = {
                (s.name, tuple(s.labels.values())): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            assert samples[("veilgate_provider_epoch_credentials_issued_total", ())] == 1
            assert samples[("veilgate_provider_documents_served_total", ())] == 1
            assert samples[("veilgate_provider_requests_refused_total", ("token-used-up",))] == 1
            assert samples[("veilgate_provider_requests_refused_total", ("rate-limited",))] == 0
            assert samples[("veilgate_provider_epoch", ())] == epoch_key.epoch
        finally:
            await svc.stop()
        assert not (tmp_path / "provider.sock").exists()

    run(loop, scenario())


def test_the_epoch_count_starts_again_each_epoch(tmp_path: Path) -> None:
    clock = [1_000_000.0]
    svc = make_service(tmp_path, 18507)
    svc.clock = lambda: clock[0]
    svc.rotate()
    svc.epoch_issued = 5
    clock[0] += 1
    svc.rotate()
    assert svc.epoch_issued == 5  # the same epoch
    clock[0] += 60
    svc.rotate()
    assert svc.epoch_issued == 0


def test_rotation_keeps_previous_current_next_and_deletes_older(tmp_path: Path) -> None:
    clock = [1_000_000.0]
    svc = make_service(tmp_path, 18505)
    svc.clock = lambda: clock[0]
    svc.keys.clear()
    svc.rotate()
    e = epoch_of(clock[0], 60)
    assert sorted(svc.keys) == [e, e + 1]
    clock[0] += 60
    svc.rotate()
    assert sorted(svc.keys) == [e, e + 1, e + 2]
    clock[0] += 120
    svc.rotate()
    assert sorted(svc.keys) == [e + 3, e + 4] or sorted(svc.keys) == [e + 2, e + 3, e + 4]
    files = sorted(int(p.stem) for p in (tmp_path / "state" / "epochs").glob("*.der"))
    assert min(files) >= e + 2


def test_document_signature_and_expiry() -> None:
    key = Ed25519PrivateKey.generate()
    doc = ProviderDocument("p", 0, 100, 60, (GW,), ())
    envelope = sign_document(doc, key, b"cert")
    assert open_document(envelope, key.public_key(), 50) == doc
    with pytest.raises(DocumentError, match="expired"):
        open_document(envelope, key.public_key(), 101)
    with pytest.raises(DocumentError, match="signature"):
        open_document(envelope, Ed25519PrivateKey.generate().public_key(), 50)
    outer = json.loads(envelope)
    outer["document"] = base64.b64encode(b'{"version": 2}').decode()
    with pytest.raises(DocumentError):
        open_document(json.dumps(outer).encode(), key.public_key(), 50)


def test_config_errors(tmp_path: Path) -> None:
    p = tmp_path / "provider.toml"
    p.write_text('[provider]\nname = "x"\nstate_dir = "s"\naccess = "token"\ntokens_file = "missing.txt"\n')
    with pytest.raises(ConfigError, match=r"provider\.tokens_file"):
        load_provider_config(p)
    p.write_text('[provider]\nname = "x"\nstate_dir = "s"\n')
    with pytest.raises(ConfigError, match="gateway"):
        load_provider_config(p)
    p.write_text(
        '[provider]\nname = "x"\nstate_dir = "s"\n'
        '[[gateway]]\nname = "g"\nhost = "1.2.3.4"\npublic_key = "bad"\n'
    )
    with pytest.raises(ConfigError, match=r"gateway\[0\].public_key"):
        load_provider_config(p)
