"""The provider's open-mode limiter: keyed on the source's IPv4 address or IPv6 /64, bounded, and
never charged for a request that is malformed or cannot be signed."""

from __future__ import annotations

import base64
import json
import time

import pytest

from tests.unit.test_provider import make_service
from veilgate.credentials.epochs import CredentialRequest, EpochKey
from veilgate.protocol.cookie import RateLimiter
from veilgate.provider.service import ProviderService, Refusal

NOW = time.time()


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> ProviderService:
    return make_service(tmp_path_factory.mktemp("limits"), 0, open_rate_per_minute=3)


@pytest.fixture
def fresh(svc: ProviderService) -> ProviderService:
    svc._ratelimit = RateLimiter(rate=3 / 60.0, burst=3, table_max=8)
    svc._token_uses.clear()
    return svc


def current_key(svc: ProviderService) -> EpochKey:
    return svc.keys[svc._current]  # (not the clock: an epoch may have begun since the fixture)


def good_body(svc: ProviderService, token: str | None = None) -> bytes:
    key = current_key(svc)
    blinded = CredentialRequest(key.public, bytes(32)).blinded
    body: dict[str, object] = {"epoch": key.epoch, "blinded": base64.b64encode(blinded).decode()}
    if token is not None:
        body["token"] = token
    return json.dumps(body).encode()


def outcome(svc: ProviderService, body: bytes, remote: str) -> str:
    decision = svc.admit(body, remote, NOW)
    return str(decision.status) if isinstance(decision, Refusal) else "ok"


def test_addresses_of_one_ipv6_64_share_one_budget(fresh: ProviderService) -> None:
    body = good_body(fresh)
    results = [outcome(fresh, body, f"2001:db8:1:2:{i:x}::{i:x}") for i in range(1, 11)]
    assert results == ["ok"] * 3 + ["429"] * 7
    assert len(fresh._ratelimit) == 1
    assert outcome(fresh, body, "2001:db8:1:3::1") == "ok"  # the next /64 is another source
    assert [outcome(fresh, body, f"192.0.2.{i}") for i in range(1, 5)] == ["ok"] * 4  # IPv4: per address


def test_a_full_table_evicts_instead_of_locking_out_a_new_source(fresh: ProviderService) -> None:
    body = good_body(fresh)
    for i in range(200):  # a flood of fresh sources, each spending its whole burst
        for _ in range(4):
            outcome(fresh, body, f"2001:db8:{i:x}::1")
    assert len(fresh._ratelimit) == 8
    assert outcome(fresh, body, "198.51.100.7") == "ok"  # an honest newcomer still gets in


def test_malformed_or_unsignable_bodies_cost_nothing(fresh: ProviderService) -> None:
    key = current_key(fresh)
    n = key.key.public.n
    k = key.key.public.k_len
    bad = [
        b"not json",
        b'{"epoch": 1}',
        json.dumps({"epoch": 12345, "blinded": base64.b64encode(bytes(k)).decode()}).encode(),
        json.dumps({"epoch": key.epoch, "blinded": base64.b64encode(bytes(k - 1)).decode()}).encode(),
        json.dumps({"epoch": key.epoch, "blinded": base64.b64encode(n.to_bytes(k, "big")).decode()}).encode(),
        json.dumps({"epoch": key.epoch, "blinded": base64.b64encode(b"\xff" * k).decode()}).encode(),
    ]
    for i in range(50):
        for body in bad:
            assert outcome(fresh, body, f"2001:db8:{i:x}::1") in ("400", "404")
    assert len(fresh._ratelimit) == 0
    body = good_body(fresh)
    assert [outcome(fresh, body, "2001:db8:0::1") for _ in range(4)] == ["ok", "ok", "ok", "429"]


def test_malformed_bodies_spend_no_invite_token_use(fresh: ProviderService) -> None:
    fresh.config.access, fresh.config.tokens = "token", frozenset({"tok"})
    fresh.config.credentials_per_token_per_epoch = 2
    try:
        k = current_key(fresh).key.public.k_len
        epoch = current_key(fresh).epoch
        short = json.dumps(
            {"epoch": epoch, "blinded": base64.b64encode(bytes(k - 1)).decode(), "token": "tok"}
        )
        for _ in range(10):
            assert outcome(fresh, short.encode(), "192.0.2.1") == "400"
        body = good_body(fresh, "tok")
        assert [outcome(fresh, body, "192.0.2.1") for _ in range(3)] == ["ok", "ok", "429"]
    finally:
        fresh.config.access, fresh.config.tokens = "open", frozenset()
