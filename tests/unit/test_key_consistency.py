"""One issuer key per epoch for everyone: the refusals that stop a provider from keying users apart."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.unit.test_provider import make_service
from veilgate.client.config import ClientConfig
from veilgate.client.supervisor import ProviderModeClient
from veilgate.credentials.blindrsa import BlindRSAError, BlindRSAPrivateKey, BlindRSAPublicKey
from veilgate.credentials.epochs import EpochKey, EpochKeyChanged, EpochKeyLedger, EpochPublicKey, epoch_of
from veilgate.gateway.config import GatewayConfig
from veilgate.gateway.daemon import Gateway
from veilgate.protocol.control import TLV_EPOCH_KEYS, TunnelConfig
from veilgate.protocol.crypto import KeyPair
from veilgate.provider.client import ProviderClient, ProviderInconsistent
from veilgate.provider.document import DocumentError, GatewayEntry, ProviderDocument
from veilgate.provider.service import ProviderService

GW = GatewayEntry("gw1", "127.0.0.1", bytes(range(32)), 51820, 443, None, "here", 0.2)


@pytest.fixture(scope="module")
def rsa_keys() -> list[BlindRSAPrivateKey]:
    return [BlindRSAPrivateKey.generate(2048) for _ in range(2)]


def document(epochs: tuple[EpochPublicKey, ...]) -> ProviderDocument:
    return ProviderDocument("p", 0, 10**10, 60, (GW,), epochs)


def with_key_der(doc: bytes, der: bytes) -> bytes:
    d = json.loads(doc)
    d["epochs"][0]["public_key"] = base64.b64encode(der).decode()
    return json.dumps(d).encode()


def test_a_document_with_two_keys_for_one_epoch_is_refused(rsa_keys: list[BlindRSAPrivateKey]) -> None:
    a, b = (EpochPublicKey(7, k.public) for k in rsa_keys)
    assert [k.key_id for k in ProviderDocument.from_bytes(document((a,)).to_bytes()).epochs] == [a.key_id]
    with pytest.raises(DocumentError, match="more than one key for epoch 7"):
        ProviderDocument.from_bytes(document((a, b)).to_bytes())


def test_small_modulus_refused_everywhere(rsa_keys: list[BlindRSAPrivateKey]) -> None:
    small = BlindRSAPublicKey(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key())
    with pytest.raises(BlindRSAError, match="modulus of 1024 bits"):
        EpochPublicKey(1, small)
    good = document((EpochPublicKey(1, rsa_keys[0].public),)).to_bytes()
    with pytest.raises(DocumentError, match="key for epoch 1 is refused: epoch key modulus of 1024 bits"):
        ProviderDocument.from_bytes(with_key_der(good, small.to_der()))


def test_public_exponent_other_than_65537_refused(rsa_keys: list[BlindRSAPrivateKey]) -> None:
    n = rsa_keys[0].public.n
    odd = BlindRSAPublicKey(rsa.RSAPublicNumbers(3, n).public_key())
    with pytest.raises(BlindRSAError, match="public exponent 3"):
        EpochPublicKey(1, odd)
    good = document((EpochPublicKey(1, rsa_keys[0].public),)).to_bytes()
    with pytest.raises(DocumentError, match="public exponent 3"):
        ProviderDocument.from_bytes(with_key_der(good, odd.to_der()))


def test_provider_refuses_small_rsa_bits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rsa_bits"):
        make_service(tmp_path, 18590, rsa_bits=1024)


def test_ledger_refuses_a_changed_key(rsa_keys: list[BlindRSAPrivateKey]) -> None:
    a, b = (EpochPublicKey(7, k.public) for k in rsa_keys)
    ledger = EpochKeyLedger()
    assert ledger.record([a])
    assert not ledger.record([a])  # the same key again is fine
    with pytest.raises(EpochKeyChanged, match="another key for epoch 7"):
        ledger.record([b])
    assert ledger.known == {7: a.key_id}
    again = EpochKeyLedger.from_json(json.loads(json.dumps(ledger.to_json())))
    assert again.conflicts([b]) == [7]
    bads: list[object] = [{}, [], {"epochs": {"7": "zz"}}, {"epochs": {"x": "00" * 8}}]
    for bad in bads:
        with pytest.raises(ValueError):
            EpochKeyLedger.from_json(bad)


def swap_current_key(svc: ProviderService) -> None:
    """The provider re-keys the current epoch (what a per-user key looks like to a second client)."""
    current = epoch_of(time.time(), svc.config.epoch_length)
    svc.keys[current] = EpochKey(current, BlindRSAPrivateKey.generate(2048))
    svc.rotate()


def test_client_refuses_a_changed_epoch_key_even_after_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        svc = make_service(tmp_path, 18591)
        await svc.start()
        try:
            cache = tmp_path / "cache"
            client = ProviderClient("https://127.0.0.1:18591", svc.fingerprint, cache_dir=cache)
            first = await client.fetch_document(time.time())
            assert (cache / "epoch-keys.json").exists()
            swap_current_key(svc)
            with caplog.at_level(logging.ERROR, "veilgate.provider"):
                with pytest.raises(ProviderInconsistent, match="another key for epoch"):
                    await client.fetch_document(time.time())
                restarted = ProviderClient("https://127.0.0.1:18591", svc.fingerprint, cache_dir=cache)
                with pytest.raises(ProviderInconsistent):
                    await restarted.fetch_document(time.time())
            assert "another key for epoch" in caplog.text
            cached = restarted.cached_document(time.time())  # the first document stays in use
            assert cached is not None and cached.envelope == first.envelope
        finally:
            await svc.stop()

    asyncio.run(scenario())


def test_gateway_refuses_a_changed_epoch_key_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        svc = make_service(tmp_path, 18592)
        await svc.start()
        try:
            gw = Gateway(
                GatewayConfig(
                    private_key=KeyPair.generate().private_bytes(),
                    issuer_public_keys=[],
                    provider_url="https://127.0.0.1:18592",
                    provider_fingerprint=svc.fingerprint,
                )
            )
            assert gw.provider is not None and gw.provider.cache_dir is None
            assert gw.epoch_sync is not None
            assert await gw.epoch_sync.refresh()
            accepted = gw.epochs.epoch_keys()
            assert len(accepted) == len(svc.keys)
            swap_current_key(svc)
            with caplog.at_level(logging.ERROR, "veilgate.provider"):
                assert not await gw.epoch_sync.refresh()
            assert "another key for epoch" in caplog.text
            assert gw.counters["provider-inconsistent"] == 1
            assert gw.epochs.epoch_keys() == accepted
        finally:
            await svc.stop()

    asyncio.run(scenario())


def test_epoch_keys_tlv_round_trip_and_chunking() -> None:
    keys = tuple((1000 + i, bytes([i]) * 8) for i in range(40))
    config = TunnelConfig(mtu=1400, epoch_keys=keys)
    body = config.encode_body()
    assert TunnelConfig.decode_body(body).epoch_keys == keys
    assert body.count(bytes((TLV_EPOCH_KEYS, 240))) == 2  # 15 pairs per TLV, then 10
    assert TunnelConfig.decode_body(TunnelConfig(mtu=1400).encode_body()).epoch_keys == ()


def supervisor(tmp_path: Path) -> ProviderModeClient:
    config = ClientConfig(
        gateway_host="",
        gateway_public_key=b"",
        private_key=b"",
        credential=b"",
        state_dir=tmp_path,
        provider_url="https://127.0.0.1:1",
        provider_fingerprint="00" * 32,
    )
    sup = ProviderModeClient(config)
    sup.gateway = GW
    return sup


def test_split_view_via_the_config_tlv(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sup = supervisor(tmp_path)
    mine, theirs = b"A" * 8, b"B" * 8
    sup.provider.ledger.known = {7: mine, 8: b"C" * 8}
    agreeing = SimpleNamespace(core=SimpleNamespace(config=TunnelConfig(epoch_keys=((7, mine), (9, theirs)))))
    assert not sup._split_view_seen(agreeing)  # type: ignore[arg-type]
    assert not sup.split_view
    differing = SimpleNamespace(core=SimpleNamespace(config=TunnelConfig(epoch_keys=((7, theirs),))))
    with caplog.at_level(logging.ERROR, "veilgate.client"):
        assert sup._split_view_seen(differing)  # type: ignore[arg-type]
    assert sup.split_view
    assert GW.public_key in sup._split_gateways
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "split view" in record.getMessage() and "epoch 7" in record.getMessage()
    assert mine.hex() not in record.getMessage() and "static" not in record.getMessage()


def test_gateway_pushes_new_epoch_keys_to_live_sessions_keeping_their_addresses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        svc = make_service(tmp_path, 18593)
        await svc.start()
        try:
            gw = Gateway(
                GatewayConfig(
                    private_key=KeyPair.generate().private_bytes(),
                    issuer_public_keys=[],
                    provider_url="https://127.0.0.1:18593",
                    provider_fingerprint=svc.fingerprint,
                )
            )
            assert gw.epoch_sync is not None
            old = TunnelConfig(ipv4=ipaddress.IPv4Interface("10.201.0.9/16"), mtu=1400)
            session = SimpleNamespace(config=old)
            monkeypatch.setitem(gw.core.sessions, 5, session)
            pushed: list[tuple[int, TunnelConfig]] = []
            monkeypatch.setattr(gw.core, "assign", lambda sid, config, now: pushed.append((sid, config)))
            monkeypatch.setattr(gw, "after_io", lambda now: None)
            assert await gw.epoch_sync.refresh()
            [(sid, config)] = pushed
            assert sid == 5 and config.ipv4 == old.ipv4 and config.mtu == 1400
            assert config.epoch_keys == gw.epochs.epoch_keys() and len(config.epoch_keys) == len(svc.keys)
            session.config = config
            assert await gw.epoch_sync.refresh()  # nothing new: nothing pushed
            assert len(pushed) == 1
        finally:
            await svc.stop()

    asyncio.run(scenario())
