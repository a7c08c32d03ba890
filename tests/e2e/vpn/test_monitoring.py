"""What an operator watches, on a live deployment: the metrics endpoints hold aggregates only, and
a daemon under the journal writes each line with its syslog priority."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from veilgate.testing import netns
from veilgate.testing.deploy import Deployment, wait_for

from .test_vpn import ping

pytestmark = pytest.mark.e2e

GATEWAY_METRICS = "127.0.0.1:9586"
PROVIDER_METRICS = "127.0.0.1:9587"
CLIENT_METRICS = "127.0.0.1:9588"

BASE64 = re.compile(r"[A-Za-z0-9+/_-]{43,}={0,2}")  # 32 bytes or more
HEX = re.compile(r"[0-9a-fA-F]{32,}")  # 16 bytes or more
IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
TOKEN = re.compile(r"[0-9A-Za-z:.%\[\]/]+")


def scrape(d: Deployment, ns: str, address: str) -> list[tuple[str, dict[str, str], float]]:
    text = d.topo.ns_run(ns, "curl", "-sS", "--fail", f"http://{address}/metrics").stdout
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def leaks(text: str, secrets: set[str]) -> list[str]:
    """What in ``text`` is an IP address, a key or credential, a session index or a known secret."""
    found = [s for s in secrets if s and s in text]
    # (a run of 43 base64 characters in lower case and underscores only is a metric's name)
    found += [b for b in BASE64.findall(text) if re.search(r"[A-Z0-9+/]", b)]
    found += IPV4.findall(text) + HEX.findall(text)
    for token in TOKEN.findall(text):
        if ":" in token:
            try:
                ipaddress.ip_address(token.strip("[]").split("%")[0].split("/")[0])
                found.append(token)
            except ValueError:
                pass
    return found


def test_metrics_hold_no_address_key_or_index_and_journal_lines_have_priorities(deploy: Deployment) -> None:
    d = deploy
    d.stop_gateway()
    d.start_provider(metrics_listen=PROVIDER_METRICS)
    log = d.dir / "gateway.log"
    offset = log.stat().st_size
    # debug: the gateway logs each session's receiver index, for this test to look for
    d.start_gateway(journal=True, metrics_listen=GATEWAY_METRICS, log_level="debug")
    d.make_provider_client("c1", metrics_listen=CLIENT_METRICS)
    d.start_client("c1")
    client = d.wait_client("c1", timeout=20)
    assert ping(d.topo, d.topo.client, netns.INTERNET_V4)
    assert ping(d.topo, d.topo.client, netns.INTERNET_V6)
    wait_for(lambda: "receiver index" in log.read_text()[offset:], 10, "the session's debug line", log)

    gateway_lines = log.read_text()[offset:].splitlines()
    indices = {int(i) for i in re.findall(r"receiver index (\d+)", "\n".join(gateway_lines))}
    assert indices
    # Under the journal: each line starts with its priority, none with a timestamp.
    assert all(re.match(r"<[2-7]>veilgate\.", line) for line in gateway_lines), gateway_lines[:5]
    assert any(line.startswith("<6>veilgate.gateway: gateway up") for line in gateway_lines)
    assert any(line.startswith("<7>") for line in gateway_lines)

    addresses = {
        netns.CLIENT_V4,
        netns.GATEWAY_V4,
        netns.INTERNET_V4,
        netns.INTERNET_V6,
        client["ipv4"].split("/")[0],
        (client["ipv6"] or "").split("/")[0],
    }
    secrets = addresses | {str(i) for i in indices} | {f"{i:08x}" for i in indices}
    secrets |= {d.provider_fingerprint or "", encode(d.gateway_key.public)}
    forbidden_values = {float(i) for i in indices} | {
        float(int(ipaddress.IPv4Address(a))) for a in addresses if a and ":" not in a
    }

    figures: dict[str, dict[str, float]] = {}
    for role, ns, address in (
        ("gateway", d.topo.gateway, GATEWAY_METRICS),
        ("provider", d.topo.gateway, PROVIDER_METRICS),
        ("client", d.topo.client, CLIENT_METRICS),
    ):
        samples = scrape(d, ns, address)
        assert samples, role
        for name, labels, value in samples:
            for text in (name, *labels, *labels.values()):
                assert not leaks(text, secrets), (role, name, labels, leaks(text, secrets))
            assert value not in forbidden_values, (role, name, labels, value)
        figures[role] = {
            name + "".join(f"|{v}" for v in labels.values()): value for name, labels, value in samples
        }

    gw, provider, c = figures["gateway"], figures["provider"], figures["client"]
    assert gw["veilgate_gateway_sessions|udp"] == 1 and gw["veilgate_gateway_bytes_total|in"] > 0
    assert gw["veilgate_gateway_handshakes_total"] >= 1
    assert provider["veilgate_provider_credentials_issued_total"] >= 1
    assert provider["veilgate_provider_documents_served_total"] >= 1
    assert c["veilgate_client_connected"] == 1 and c["veilgate_client_transport|udp"] == 1
    assert c["veilgate_client_handshakes_total"] >= 1 and c["veilgate_client_bytes_total|out"] > 0


def encode(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_leak_detection() -> None:
    """The checks above find what they look for."""
    assert leaks("10.201.3.4", set()) and leaks("fd7a:201::5", set()) and leaks("[::1]", set())
    assert leaks(encode(bytes(32)), set()) and leaks(binascii.hexlify(bytes(16)).decode(), set())
    assert leaks("sess 3735928559", {"3735928559"})
    assert not leaks("token-used-up", set()) and not leaks("udp", set()) and not leaks("v4", set())
    assert not leaks("veilgate_provider_epoch_credentials_issued_total", set())
