"""Identities fetched ahead: the stash, the fetch windows, rotation without a fetch, in-tunnel binding."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from veilgate.client.config import ClientConfig
from veilgate.client.prefetch import (
    Identity,
    IdentityStash,
    fetch_time,
    fetch_window,
    min_delay,
    quiet_margin,
    rotation_time,
)
from veilgate.client.supervisor import ProviderModeClient
from veilgate.credentials.epochs import BlindCredential, epoch_of
from veilgate.protocol.crypto import KeyPair
from veilgate.provider.client import ProviderClient, ProviderUnavailable
from veilgate.provider.config import ProviderConfig
from veilgate.provider.service import ProviderService


def identity(epoch: int) -> Identity:
    key = KeyPair.generate()
    return Identity(key, BlindCredential(bytes(8), epoch, key.public, bytes(32), bytes(256)))


def test_stash_fills_rotation_then_spare_then_second_next_and_hands_out_valid_ones() -> None:
    stash = IdentityStash()
    assert stash.wanted(10) == 11  # first the rotation at the start of the next epoch
    stash.add(identity(11))
    assert stash.wanted(10) == 10  # then one to fail over with now
    stash.add(identity(10))
    assert stash.wanted(10) == 11  # then the next epoch's failover spare
    stash.add(identity(11))
    assert stash.wanted(10) is None
    # In epoch 11: the rotation takes one of 11, the other stays as the spare.
    assert stash.wanted(11) == 12
    assert stash.take(e for e in (11, 10) if e > 10) is not None
    assert stash.count(11) == 1
    # A previous epoch's identity is still valid (to the end of this one) for a new session.
    stash = IdentityStash()
    stash.add(identity(9))
    assert stash.wanted(10) == 11
    assert stash.take_usable(11) is None  # epoch 9 is no longer accepted in epoch 11
    assert len(stash) == 1
    first = stash.take_usable(10)
    assert first is not None and first.epoch == 9 and len(stash) == 0
    stash.add(identity(8))
    stash.add(identity(9))
    stash.prune(10)
    assert [stash.count(8), stash.count(9)] == [0, 1]


@pytest.mark.parametrize("length", [10, 15, 3600, 86400])
def test_fetches_fall_only_in_the_window_clear_of_epoch_changes(length: int) -> None:
    margin = quiet_margin(length)
    epoch = 1000
    start = epoch * length
    assert fetch_window(start, length) == (start + 1 + margin, start + length - margin)
    assert fetch_window(start + length - margin, length) is None
    for k in range(200):
        now = start + (length * k) / 200
        at = fetch_time(now, length)
        if at is None:
            assert now + min_delay(length) >= start + length - margin
            continue
        assert max(now + min_delay(length), start + 1 + margin) <= at < start + length - margin
        # Every rotation of the next epoch is more than ``margin + 1`` s after any fetch.
        rotation = rotation_time(epoch + 1, length)
        assert start + length + 1 <= rotation <= start + length + 1 + margin
        assert rotation - at > margin + 1


def _client(tmp_path: Path) -> ProviderModeClient:
    config = ClientConfig(
        "",
        b"",
        b"",
        b"",
        provider_url="https://127.0.0.1:1",
        provider_fingerprint="ab" * 32,
        state_dir=tmp_path,
    )
    return ProviderModeClient(config)


class FakeClient:
    def __init__(self) -> None:
        self.rotated: list[bytes] = []

    def rotate_identity(self, key: KeyPair, credential: bytes) -> None:
        self.rotated.append(credential)


def test_rotation_takes_a_stashed_identity_and_never_fetches(tmp_path: Path) -> None:
    length = 60
    epoch = epoch_of(time.time(), length)
    supervisor = _client(tmp_path)
    supervisor.credential = identity(epoch - 1).credential
    fake = FakeClient()
    # Nothing stashed: the session keeps its (still valid) credential; rotate() cannot fetch (it is
    # not a coroutine) and the next attempt is at the next epoch's rotation time.
    supervisor.stash.add(identity(epoch + 1))  # not valid yet: never used early
    next_at = supervisor.rotate(fake, length)  # type: ignore[arg-type]
    assert fake.rotated == [] and supervisor.rotations == 0
    assert (epoch + 1) * length + 1 <= next_at <= (epoch + 1) * length + 1 + quiet_margin(length)
    supervisor.stash.add(mine := identity(epoch))
    supervisor.rotate(fake, length)  # type: ignore[arg-type]
    assert fake.rotated == [mine.credential.encode()] and supervisor.credential == mine.credential
    assert supervisor.stash.count(epoch + 1) == 1


def _service(tmp: Path, port: int) -> ProviderService:
    return ProviderService(
        ProviderConfig(
            name="test",
            state_dir=tmp / "state",
            listen="127.0.0.1",
            port=port,
            epoch_length=60,
            rsa_bits=2048,
            gateways=[],
        )
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="binding a socket to a device needs CAP_NET_RAW")
def test_a_fetch_bound_to_a_device_leaves_by_it_or_fails(tmp_path: Path) -> None:
    async def scenario() -> None:
        svc = _service(tmp_path, 18561)
        await svc.start()
        try:
            client = ProviderClient("https://127.0.0.1:18561", svc.fingerprint)
            doc = (await client.fetch_document(time.time(), device="lo")).document
            epoch_key = doc.epoch_key(epoch_of(time.time(), 60))
            assert epoch_key is not None
            await client.obtain_credential(epoch_key, KeyPair.generate().public, device="lo")
            # The route to 127.0.0.1 is lo: bound to any other device the request cannot get there,
            # and it fails instead of taking the route.
            with pytest.raises(ProviderUnavailable, match="No such device"):
                await client.obtain_credential(epoch_key, KeyPair.generate().public, device="vgnodev0")
            with pytest.raises(ProviderUnavailable):
                await client.fetch_document(time.time(), device="vgnodev0")
            assert svc.counters["issued"] == 1
        finally:
            await svc.stop()

    asyncio.run(scenario())


class FakeCore:
    def __init__(self, authenticated_rx: int) -> None:
        self.authenticated_rx = authenticated_rx


class FakeSession:
    def __init__(self, authenticated_rx: int) -> None:
        self.core = FakeCore(authenticated_rx)


def test_an_identity_is_kept_only_if_it_never_left_this_host(tmp_path: Path) -> None:
    supervisor = _client(tmp_path)
    epoch = epoch_of(time.time(), 60)
    # The gateway never answered: message 3 (static key, credential) was never written.
    supervisor._session_identities = [identity(epoch)]
    supervisor._keep_unshown(FakeSession(0))  # type: ignore[arg-type]
    assert supervisor.stash.count(epoch) == 1
    # It answered: the identity was shown and is never used again.
    supervisor._session_identities = [identity(epoch)]
    supervisor._keep_unshown(FakeSession(1))  # type: ignore[arg-type]
    assert supervisor.stash.count(epoch) == 1 and supervisor._session_identities == []
