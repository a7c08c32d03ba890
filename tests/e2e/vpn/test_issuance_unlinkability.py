"""The provider as the adversary: can it link credential issuance to sessions and rotations?

It runs the issuer and the gateway, so the test gives it everything both see: every request to the
issuer with its time, source address, epoch and blinded message; every credential the gateway checks
with its time and static key; both logs at debug level and the issuer's state folder. It tries to
match issuances to uses by address, by timing and by content. Per docs/credentials.md (section 9) it
may succeed only for each client's first credential, fetched from the client's own address at
bootstrap.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from veilgate.credentials.epochs import BlindCredential, epoch_of
from veilgate.testing import netns
from veilgate.testing.deploy import Deployment, wait_for

from .test_vpn import ping

pytestmark = pytest.mark.e2e

EPOCH = 15  # seconds: rotations start 1 s into each epoch, prefetches only in [4.75, 11.25)
LINK_WINDOW = 3.0  # an issuance at most this long before a use is taken as its source


@pytest.fixture
def pdeploy(deploy: Deployment) -> Deployment:
    deploy.stop_gateway()
    return deploy


@dataclass(frozen=True)
class Issuance:
    time: float
    peer: str
    epoch: int
    blinded: bytes = field(repr=False)


@dataclass(frozen=True)
class Use:
    time: float
    credential: BlindCredential


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _log_times(path: Path, needle: str) -> list[float]:
    """Times of the log lines containing ``needle`` (the daemons' format starts with asctime)."""
    times = []
    for line in path.read_text().splitlines():
        if needle in line:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            times.append(stamp.timestamp())
    return times


def _issuances(d: Deployment) -> list[Issuance]:
    return [
        Issuance(float(r["time"]), str(r["peer"]), int(r["epoch"]), base64.b64decode(str(r["blinded"])))
        for r in _records(d.spy_records["provider"])
        if r["path"] == "/v1/credential"
    ]


def _uses(record: Path) -> dict[bytes, Use]:
    """By static key: the first time the gateway checked a credential for it (a rekey repeats it)."""
    checked = [r for r in _records(record) if "refused" not in r]
    assert checked, "the gateway checked no credential"
    uses: dict[bytes, Use] = {}
    for r in checked:
        static = bytes.fromhex(str(r["static"]))
        if static not in uses:
            uses[static] = Use(float(r["time"]), BlindCredential.decode(bytes.fromhex(str(r["credential"]))))
    return uses


def _within(issuances: list[Issuance], t: float) -> list[Issuance]:
    """The issuances in the ``LINK_WINDOW`` seconds before ``t``."""
    return [i for i in issuances if t - LINK_WINDOW <= i.time <= t]


def _encodings(data: bytes) -> list[bytes]:
    return [data, data.hex().encode(), base64.b64encode(data), base64.urlsafe_b64encode(data)]


def test_provider_cannot_link_issuance_to_rotation_by_address_timing_or_content(
    pdeploy: Deployment,
) -> None:
    d = pdeploy
    topo = d.topo
    clients = [("c1", topo.client, netns.CLIENT_V4)]
    for n in (2, 3):
        ns, address = topo.add_client(n)
        clients.append((f"c{n}", ns, address))
    real_addresses = {address for _, _, address in clients}
    # The issuer behind the gateway's NAT (the deployment docs/provider.md requires); a generous rate
    # limit, since every prefetch of the gateway's clients comes from its one egress address.
    d.start_provider(
        epoch_length=EPOCH, on_internet=True, spy=True, log_level="debug", open_rate_per_minute=600
    )
    d.start_gateway(spy=True, log_level="debug")
    # Start just after an epoch begins, so each client's first epoch still has a prefetch window and
    # its first rotation comes at the next epoch.
    if time.time() % EPOCH > 1.5:
        time.sleep(EPOCH - time.time() % EPOCH + 0.2)
    first_epoch = epoch_of(time.time(), EPOCH)
    for name, ns, _ in clients:
        d.make_provider_client(name, log_level="debug")
        d.start_client(name, ns=ns)
    for name, _, _ in clients:
        d.wait_client(name, timeout=20)
    wait_for(
        lambda: all(d.client_status(name)["identity_rotations"] >= 1 for name, _, _ in clients),
        2 * EPOCH + 10,
        "every client to rotate its identity once",
        d.dir / "c1.log",
    )
    assert ping(topo, topo.client, netns.INTERNET_V4)  # the tunnel still carries traffic
    statuses = {name: d.client_status(name) for name, _, _ in clients}
    rotations = sum(int(s["identity_rotations"]) for s in statuses.values())

    # ---- what the adversary holds
    issuances = _issuances(d)
    uses = _uses(d.spy_records["gateway"])
    ordered = sorted(uses.values(), key=lambda u: u.time)
    assert len(ordered) == len(clients) + rotations, (len(ordered), rotations)
    bootstrap, later = ordered[: len(clients)], ordered[len(clients) :]
    assert all(u.credential.epoch == first_epoch for u in bootstrap)
    assert all(u.time < (first_epoch + 1) * EPOCH for u in bootstrap)
    assert all(u.time >= (first_epoch + 1) * EPOCH for u in later)
    gateway_log = d.dir / "gateway.log"
    rotation_times = _log_times(gateway_log, "rotated its identity")
    session_times = _log_times(gateway_log, "session established")
    assert len(rotation_times) == rotations and len(session_times) == len(clients)

    # ---- by address: only the bootstrap fetches come from the clients' own addresses; every other
    # issuance comes from the gateway's egress address (never from a client's tunnel address).
    from_clients = [i for i in issuances if i.peer in real_addresses]
    assert sorted(i.peer for i in from_clients) == sorted(real_addresses), from_clients
    others = [i for i in issuances if i.peer not in real_addresses]
    assert {i.peer for i in others} == {netns.GATEWAY_I_V4}, {i.peer for i in others}
    assert len(others) >= rotations

    # ---- by timing: the latest issuance shortly before a use is its likely source. That is so for
    # the bootstrap sessions (the attack works where the docs say it does) and for no rotation.
    def latest_before(t: float) -> Issuance | None:
        earlier = _within(issuances, t)
        return max(earlier, key=lambda i: i.time) if earlier else None

    for use in bootstrap:
        source = latest_before(use.time)
        assert source is not None and source.peer in real_addresses, (use, source)
    for t in [u.time for u in later] + rotation_times:
        source = latest_before(t)
        assert source is None, f"an issuance {t - source.time:.2f} s before a rotation: {source}"

    # ---- by content: nothing the gateway saw appears in what the issuer stored, logged or received.
    issuer_side = (
        b"".join(p.read_bytes() for p in sorted((d.dir / "provider-state").rglob("*")) if p.is_file())
        + (d.dir / "provider.log").read_bytes()
        + d.spy_records["provider"].read_bytes()
    )
    blinded = {i.blinded for i in issuances}
    for static, use in uses.items():
        cred = use.credential
        gateway_text = gateway_log.read_bytes()
        for what, secret in (
            ("static key", static),
            ("signature", cred.signature),
            ("prefix", cred.prefix),
            ("credential", cred.encode()),
        ):
            assert secret not in blinded, what
            for form in _encodings(secret):
                assert form not in issuer_side, f"a client's {what} in what the issuer kept: {form[:16]!r}"
                assert form not in gateway_text, f"a client's {what} in the gateway's log"
    for name, _, address in clients:
        tunnel_ip = str(statuses[name]["ipv4"]).split("/")[0].encode()
        assert tunnel_ip not in issuer_side, name
        assert address.encode() not in (d.dir / "provider.log").read_bytes(), name

    # ---- and the clients' own account agrees
    for name, status in statuses.items():
        assert status["direct_fetches"] == 1, (name, status)  # the bootstrap credential only
        assert status["identities_prefetched"] >= 1, (name, status)
        assert status["failovers"] == 0, (name, status)


def test_a_failover_takes_a_stashed_identity_and_fetches_nothing(pdeploy: Deployment) -> None:
    d = pdeploy
    topo = d.topo
    d.start_provider(
        [
            ("gateway", d.udp_port, d.tcp_port, "near", 0.0),
            ("gw2", d.udp_port + 1, d.tcp_port + 1, "far", 0.0),
        ],
        epoch_length=EPOCH,
        on_internet=True,
        spy=True,
        open_rate_per_minute=600,
    )
    d.start_gateway(spy=True, log_level="debug")
    d.start_second_gateway(spy=True, log_level="debug")
    d.make_provider_client("c1", failover_after=3.0)
    d.start_client("c1")
    first = d.wait_client("c1", timeout=20)["gateway"]
    other = "gw2" if first == "gateway" else "gateway"
    # The stash fills in priority order (the next epoch's rotation, then a spare usable now): with two
    # identities in it, one is a spare to fail over with. The spare comes only in an epoch whose first
    # fetch fell early enough in the window for a second one: give it several epochs.
    wait_for(
        lambda: int(d.client_status("c1")["identities_stashed"]) >= 2,
        6 * EPOCH + 5,
        "a failover spare in the stash",
        d.dir / "c1.log",
    )
    d.stop_gateway(first)
    wait_for(
        lambda: _status_or_empty(d).get("gateway") == other and bool(_status_or_empty(d).get("connected")),
        30,
        f"failover to {other}",
        d.dir / "c1.log",
    )
    assert ping(topo, topo.client, netns.INTERNET_V4)
    status = d.client_status("c1")
    issuances = _issuances(d)
    assert [i.peer for i in issuances if i.peer == netns.CLIENT_V4] == [netns.CLIENT_V4]  # bootstrap only
    old_keys = set(_uses(d.spy_records[first]))
    new_uses = _uses(d.spy_records[other])
    assert len(new_uses) == 1 and not old_keys & set(new_uses)  # a new static key (and credential)
    (use,) = new_uses.values()
    assert _within(issuances, use.time) == [], "an issuance just before the new session"
    assert status["failovers"] == 1 and status["direct_fetches"] == 1, status


def _status_or_empty(d: Deployment) -> dict[str, object]:
    try:
        return d.client_status("c1")
    except OSError:
        return {}
