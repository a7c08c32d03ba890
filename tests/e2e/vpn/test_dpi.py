"""What deep packet inspection on the client's network says about veilgate's carriers.

Captured on the router (the client's ISP) with tcpdump, classified by nDPI's ndpiReader and by the
published rules for fully encrypted traffic (veilgate.testing.fet). The first tests show the
harness works on traffic whose answer is known; the others hold veilgate's carriers to what they
must show. ``make dpi`` prints the full picture for every carrier.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from veilgate.testing import Topology, dpi, netns

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("ndpiReader") is None or shutil.which("tcpdump") is None,
        reason="needs tcpdump and ndpiReader (Debian libndpi-bin; make deps installs them)",
    ),
]


@pytest.fixture(autouse=True)
def data_path() -> str:
    """The bytes on the wire are the same on both data paths: these tests run once, on the default."""
    return "default"


def _wait_listening(topo: Topology, ns: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while f":{port} " not in topo.ns_run(ns, "ss", "-Hltn").stdout:
        assert time.monotonic() < deadline, f"nothing listens on {port} in {ns}"
        time.sleep(0.05)


def _flow_to(report_flows: list[dpi.FlowReport], server: str) -> dpi.FlowReport:
    matches = [f for f in report_flows if f.ndpi is not None and server in (f.ndpi.a, f.ndpi.b)]
    assert len(matches) == 1, [f.label for f in report_flows]
    return matches[0]


def test_nDPI_knows_the_vpn_protocols_it_is_asked_about() -> None:
    vpns = dpi.vpn_protocols()
    assert {"WireGuard", "OpenVPN", "IPsec"} <= set(vpns), vpns
    assert "TLS" not in vpns


def test_harness_https_is_tls_to_ndpi_and_exempt_from_the_fet_rules(topo: Topology, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=veilgate.test"),
        ],
        check=True,
        capture_output=True,
    )
    # A port nDPI attributes to nothing: the label must come from the bytes.
    topo.spawn(
        topo.gateway,
        "openssl",
        "s_server",
        "-cert",
        str(cert),
        "-key",
        str(key),
        "-accept",
        f"{netns.GATEWAY_V4}:4443",
        "-www",
        "-quiet",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_listening(topo, topo.gateway, 4443)
    pcap = tmp_path / "https.pcap"
    with dpi.Capture(topo, topo.router, dpi.client_side_interface(topo), pcap):
        topo.ns_run(
            topo.client, "curl", "-sSk", "--fail", "-o", "/dev/null", f"https://{netns.GATEWAY_V4}:4443/"
        )
    server = f"{netns.GATEWAY_V4}:4443"
    report = dpi.analyse(dpi.Carrier("https", 4443), pcap, server)
    flow = _flow_to(report.flows, server)
    assert flow.ndpi is not None and flow.ndpi.master == "TLS" and flow.ndpi.confidence == "DPI", flow.label
    assert flow.verdict is not None and not flow.verdict.flagged and "Ex5" in flow.verdict.exemptions


def test_harness_random_bytes_are_flagged_and_a_vpn_port_is_labelled_by_port_alone(
    topo: Topology, tmp_path: Path
) -> None:
    payload = random.Random(2023).randbytes(200)
    topo.spawn(
        topo.gateway,
        sys.executable,
        "-c",
        f"import socket; s = socket.create_server(('{netns.GATEWAY_V4}', 4444)); c, _ = s.accept(); "
        "[None for _ in iter(lambda: c.recv(4096), b'')]",
    )
    _wait_listening(topo, topo.gateway, 4444)
    gw = netns.GATEWAY_V4
    send = (
        "import socket, sys; data = bytes.fromhex(sys.argv[1]); "
        f"s = socket.create_connection(('{gw}', 4444)); s.sendall(data); s.close(); "
        f"u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(data, ('{gw}', 51820))"
    )
    pcap = tmp_path / "random.pcap"
    with dpi.Capture(topo, topo.router, dpi.client_side_interface(topo), pcap):
        topo.ns_run(topo.client, sys.executable, "-c", send, payload.hex())
    report = dpi.analyse(dpi.Carrier("random", 4444), pcap, f"{netns.GATEWAY_V4}:4444")
    tcp = _flow_to(report.flows, f"{netns.GATEWAY_V4}:4444")
    assert tcp.first is not None and tcp.first.payload == payload
    assert tcp.verdict is not None and tcp.verdict.flagged
    assert tcp.ndpi is not None and tcp.ndpi.master == "Unknown"
    # The same random bytes in a datagram to WireGuard's port: nDPI names WireGuard from the port.
    udp = _flow_to(report.flows, f"{netns.GATEWAY_V4}:51820")
    assert udp.ndpi is not None and udp.ndpi.master == "WireGuard"
    assert udp.ndpi.confidence == "Match by port", udp.label


# ---- veilgate's carriers


def _carrier(topo: Topology, tmp_path: Path, transport: str, port: int) -> list[dpi.FlowReport]:
    report = dpi.session(topo, tmp_path, dpi.Carrier(transport, port))
    flows = report.carrier_flows()
    assert len(flows) == 1, [(f.label, f.first) for f in report.flows]
    assert flows[0].ndpi is not None and flows[0].first is not None
    return flows


@pytest.mark.parametrize(
    ("transport", "port"), [("udp", 51820), ("udp", 443), ("tcp", 8443), ("tcp", 443), ("tls", 443)]
)
def test_no_carrier_is_recognised_as_a_vpn_from_its_bytes(
    topo: Topology, tmp_path: Path, transport: str, port: int
) -> None:
    vpns = set(dpi.vpn_protocols())
    for flow in _carrier(topo, tmp_path, transport, port):
        assert flow.ndpi is not None
        if flow.ndpi.names & vpns:
            assert flow.ndpi.confidence != "DPI", flow.label


@pytest.mark.parametrize(("transport", "port"), [("udp", 443), ("tcp", 443), ("tcp", 8443), ("tls", 443)])
def test_on_ports_no_vpn_owns_no_carrier_is_labelled_a_vpn(
    topo: Topology, tmp_path: Path, transport: str, port: int
) -> None:
    vpns = set(dpi.vpn_protocols())
    for flow in _carrier(topo, tmp_path, transport, port):
        assert flow.ndpi is not None and not flow.ndpi.names & vpns, flow.label


def test_the_tls_carrier_is_tls_to_ndpi_and_exempt_from_the_fet_rules(topo: Topology, tmp_path: Path) -> None:
    (flow,) = _carrier(topo, tmp_path, "tls", 443)
    assert flow.ndpi is not None and flow.ndpi.master == "TLS" and flow.ndpi.confidence == "DPI", flow.label
    verdict = flow.verdict
    assert verdict is not None and not verdict.flagged and "Ex5" in verdict.exemptions, verdict


# ---- with obfuscation (docs/protocol.md 14.4): the flow's first bytes are an ordinary protocol's


@pytest.mark.parametrize(
    ("transport", "port"), [("udp", 51820), ("udp", 1194), ("tcp", 8443), ("tcp", 1194), ("tcp", 51820)]
)
def test_obfuscated_carriers_are_not_labelled_a_vpn_even_on_vpn_ports(
    topo: Topology, tmp_path: Path, transport: str, port: int
) -> None:
    vpns = set(dpi.vpn_protocols())
    report = dpi.session(topo, tmp_path, dpi.Carrier(transport, port, obfuscation=True))
    flows = report.carrier_flows()
    assert len(flows) == 1, [(f.label, f.first) for f in report.flows]
    ndpi = flows[0].ndpi
    assert ndpi is not None and not ndpi.names & vpns, flows[0].label
    # Recognised from its bytes, not guessed from the port.
    assert ndpi.confidence == "DPI", flows[0].label
    assert ndpi.protocol == ("STUN" if transport == "udp" else "HTTP_Connect"), flows[0].label


@pytest.mark.parametrize("port", [8443, 443, 1194])
def test_the_obfuscated_tcp_carrier_is_not_flagged_as_fully_encrypted(
    topo: Topology, tmp_path: Path, port: int
) -> None:
    report = dpi.session(topo, tmp_path, dpi.Carrier("tcp", port, obfuscation=True))
    flows = report.carrier_flows()
    assert len(flows) == 1, [(f.label, f.first) for f in report.flows]
    verdict = flows[0].verdict
    assert verdict is not None
    assert not verdict.flagged, verdict.summary()
