"""The TLS carrier in namespaces: fallback from UDP and back, and what everyone else sees on port 443."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from veilgate.config.keys import encode_key
from veilgate.testing import Topology, netns
from veilgate.testing.deploy import Deployment
from veilgate.transport.cover import DEFAULT_PAGE

from .test_vpn import ping

NAME = "www.example.org"


@pytest.fixture
def tls_deploy(topo: Topology, tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(topo, tmp_path / "vg")
    d.enable_tls(NAME)
    d.start_gateway()
    try:
        yield d
    finally:
        for name in list(d.clients):
            d.stop_client(name)
        if d.gateway_proc is not None:
            d.stop_gateway()


def test_udp_blocked_falls_back_to_tls_and_returns_with_the_same_address(tls_deploy: Deployment) -> None:
    deploy = tls_deploy
    topo = deploy.topo
    deploy.make_client("c1", reprobe_interval=1.0)
    deploy.start_client("c1")
    first = deploy.wait_client("c1", transport="udp")
    topo.block_udp()
    on_tls = deploy.wait_client("c1", transport="tls", timeout=15)
    assert ping(topo, topo.client, netns.INTERNET_V4)
    assert deploy.gateway_status()["sessions_by_transport"] == {"tls": 1}
    topo.unblock_udp()
    back = deploy.wait_client("c1", transport="udp", timeout=8)
    assert ping(topo, topo.client, netns.INTERNET_V4)
    assert first["ipv4"] == on_tls["ipv4"] == back["ipv4"]
    assert [s["to"] for s in back["switches"]] == ["udp", "tls", "udp"]
    assert deploy.gateway_status()["sessions"] == 1


def test_udp_blocked_from_the_start_connects_over_tls_not_plain_tcp(tls_deploy: Deployment) -> None:
    topo = tls_deploy.topo
    topo.block_udp()
    tls_deploy.start_client("c1")
    status = tls_deploy.wait_client("c1", transport="tls", timeout=10)
    assert [s["to"] for s in status["switches"]] == ["tls"]
    assert ping(topo, topo.client, netns.INTERNET_V4)


def _curl(topo: Topology, *args: str) -> subprocess.CompletedProcess[str]:
    return topo.ns_run(
        topo.client,
        "curl",
        "-sS",
        "-k",
        "--max-time",
        "5",
        "--resolve",
        f"{NAME}:443:{netns.GATEWAY_V4}",
        *args,
        check=False,
    )


def test_web_clients_get_the_cover_page(tls_deploy: Deployment) -> None:
    topo = tls_deploy.topo
    page = _curl(topo, f"https://{NAME}/")
    assert page.returncode == 0 and page.stdout.encode() == DEFAULT_PAGE, page.stderr
    head = _curl(topo, "-I", f"https://{NAME}/")
    assert head.stdout.startswith("HTTP/1.1 200 OK"), head.stdout
    assert "content-type: text/html" in head.stdout.lower() and "date:" in head.stdout.lower()
    missing = _curl(topo, "-o", "/dev/null", "-w", "%{http_code} %{http_version}", f"https://{NAME}/x")
    assert missing.stdout == "404 1.1"
    openssl = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            topo.client,
            "openssl",
            "s_client",
            "-connect",
            f"{netns.GATEWAY_V4}:443",
            "-servername",
            NAME,
            "-alpn",
            "h2,http/1.1",
            "-quiet",
        ],
        input="GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert "This site is under construction." in openssl.stdout, openssl.stderr
    assert tls_deploy.gateway_status()["sessions"] == 0


def _probe(deploy: Deployment) -> dict[str, Any]:
    assert deploy.tls is not None
    name, pin = deploy.tls
    result = deploy.topo.ns_run(
        deploy.topo.client,
        sys.executable,
        "-m",
        "veilgate.testing.tlsprobe",
        "--gateway",
        netns.GATEWAY_V4,
        "--name",
        name,
        "--pin",
        pin,
        "--gateway-key",
        encode_key(deploy.gateway_key.public),
        "--cert",
        str(deploy.dir / "tls.crt"),
        "--key",
        str(deploy.dir / "tls.key"),
        timeout=60,
    )
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def test_probes_get_exactly_what_the_cover_server_gives(tls_deploy: Deployment) -> None:
    before = tls_deploy.gateway_status()["totals"]
    t0 = time.monotonic()
    seen = _probe(tls_deploy)
    assert time.monotonic() - t0 < 40
    # The captured flight: a ClientHello, then (after the server's flight) the client's Finished and
    # the hello in application-data records.
    assert seen["first_flight"][0][0] == 22 and seen["first_flight"][-1][0] == 23
    replay = seen["replayed_first_flight"]
    gw_records, ref_records = replay["gateway"]["records"], replay["reference"]["records"]
    # The server's flight is new each time (its random, key share and ECDSA signature): the same
    # records, in the same order, lengths within the two bytes an ECDSA signature varies by.
    assert [r[0] for r in gw_records] == [r[0] for r in ref_records], (gw_records, ref_records)
    assert all(abs(a[1] - b[1]) <= 2 for a, b in zip(gw_records, ref_records, strict=True))
    assert replay["gateway"]["closed"] == replay["reference"]["closed"]
    for probe in (
        "random_bytes",
        "plain_http_get",
        "tls_http_get",
        "tls_random_bytes",
        "tls_random_head",
        "tls_browser_get",
        "tls_short_random",
        "tls_h2_preface",
        "tls_nothing",
    ):
        assert seen[probe]["gateway"] == seen[probe]["reference"], probe
    assert base64.b64decode(seen["tls_http_get"]["gateway"]["data"]).endswith(DEFAULT_PAGE)
    assert base64.b64decode(seen["tls_browser_get"]["gateway"]["data"]).endswith(DEFAULT_PAGE)
    assert base64.b64decode(seen["tls_h2_preface"]["gateway"]["data"]).startswith(b"HTTP/1.1 405 ")
    assert base64.b64decode(seen["tls_random_head"]["gateway"]["data"]).startswith(b"HTTP/1.1 400 ")
    # Only the real client's connection got through the gate, and it sent no handshake.
    after = tls_deploy.gateway_status()
    assert after["sessions"] == 0 and after["totals"] == before
