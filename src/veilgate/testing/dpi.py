"""What a deep packet inspection box on the client's network says about veilgate's carriers.

A session runs in a ``Topology`` (client ── router ── gateway ── internet): the router, where an
ISP's classifier would sit, captures with tcpdump on its interface toward the client while the
client connects, pings and fetches a file through the tunnel. The capture is then judged by two
classifiers veilgate did not write:

- nDPI's ``ndpiReader`` (Debian's libndpi-bin), per flow: protocol (master/application), category
  and how it got there (its "confidence": DPI, match by port, ...);
- the rules a censor was shown to use against fully encrypted traffic (``veilgate.testing.fet``),
  on the first data-carrying packet the client sends on each flow.

``python bench/dpi.py`` (``make dpi``) runs every carrier through it; tests/e2e/vpn/test_dpi.py
holds veilgate to what it must show.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import dpkt

from veilgate.config.keys import encode_key, write_key_file
from veilgate.protocol.crypto import KeyPair
from veilgate.testing import fet, netns
from veilgate.testing.deploy import Deployment
from veilgate.testing.netns import Topology

NDPI_READER = "ndpiReader"
VPN_CATEGORY = "VPN"


# ---- capture


class Capture:
    """tcpdump in a namespace, writing every packet on ``interface`` to ``path`` until closed."""

    def __init__(self, topo: Topology, ns: str, interface: str, path: Path) -> None:
        self.topo, self.ns, self.interface, self.path = topo, ns, interface, path
        self.proc: subprocess.Popen[Any] | None = None
        self.log = path.with_suffix(".tcpdump.log")

    def __enter__(self) -> Capture:
        if shutil.which("tcpdump") is None:
            raise RuntimeError("tcpdump is not installed (make deps installs it)")
        log = self.log.open("w")
        # --immediate-mode and -U: each packet is taken and written as it arrives (without them a
        # short capture ends with its packets still in the kernel's buffer); -Z root: keep the
        # right to write the file.
        self.proc = self.topo.spawn(
            self.ns,
            "tcpdump",
            "-i",
            self.interface,
            "-w",
            str(self.path),
            "--immediate-mode",
            "-U",
            "-n",
            "-s",
            "0",
            "-Z",
            "root",
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        deadline = time.monotonic() + 10
        while "listening on" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tcpdump did not start: {self.log.read_text().strip()}")
            time.sleep(0.02)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None:
            time.sleep(0.2)  # the last packets of the session reach the interface
            self.topo.stop(self.proc)
            self.proc = None


def client_side_interface(topo: Topology) -> str:
    """The router's interface toward the client: what the client's ISP sees."""
    return f"vg{topo.tag}r0"


# ---- nDPI


@dataclass(frozen=True)
class NdpiFlow:
    """One flow as ``ndpiReader -v 2`` lists it."""

    l4: str
    a: str
    b: str
    proto_id: str
    master: str
    app: str
    category: str
    confidence: str
    line: str

    @property
    def protocol(self) -> str:
        """``master.app`` as nDPI writes it, or the one name when they are the same."""
        return self.master if self.app == self.master else f"{self.master}.{self.app}"

    @property
    def names(self) -> set[str]:
        return {self.master, self.app}

    def endpoints(self) -> frozenset[str]:
        return frozenset((self.a, self.b))


_FLOW_LINE = re.compile(
    r"^\s*\d+\s+(?P<l4>\S+)\s+(?P<a>\S+)\s+<?->\s+(?P<b>\S+)\s+\[proto:\s*(?P<id>[\d.]+)/(?P<name>[^\]]+)\]"
)
_CONFIDENCE = re.compile(r"\[Confidence:\s*([^\]]+)\]")
_CATEGORY = re.compile(r"\[cat:\s*([^/\]]+)/\d+\]")


def parse_ndpi_flows(text: str) -> list[NdpiFlow]:
    """Every flow line of ``ndpiReader -v 2`` output (detected and undetected flows alike)."""
    flows = []
    for line in text.splitlines():
        m = _FLOW_LINE.match(line)
        if m is None:
            continue
        master, _, app = m["name"].partition(".")
        confidence = _CONFIDENCE.search(line)
        category = _CATEGORY.search(line)
        flows.append(
            NdpiFlow(
                l4=m["l4"],
                a=m["a"],
                b=m["b"],
                proto_id=m["id"],
                master=master,
                app=app or master,
                category=category[1] if category else "Unspecified",
                confidence=confidence[1] if confidence else "",
                line=line.strip(),
            )
        )
    return flows


@dataclass(frozen=True)
class NdpiResult:
    flows: list[NdpiFlow]
    text: str
    """ndpiReader's report (``-v 2``), as printed."""
    csv: str
    """Its ``-C`` CSV (nDPI 4.2 writes only the flows it detected there)."""


def ndpi_version() -> str:
    out = subprocess.run([NDPI_READER, "-h"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"nDPI\s+(\S+)", out)
    return m[1] if m else "unknown"


def classify(pcap: Path) -> NdpiResult:
    """Run ndpiReader on a capture and parse its per-flow classification."""
    if shutil.which(NDPI_READER) is None:
        raise RuntimeError("ndpiReader is not installed (Debian package libndpi-bin; make deps installs it)")
    csv_path = pcap.with_suffix(".ndpi.csv")
    result = subprocess.run(
        [NDPI_READER, "-i", str(pcap), "-v", "2", "-C", str(csv_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"ndpiReader failed on {pcap} ({result.returncode}): {result.stderr.strip()}")
    csv = csv_path.read_text() if csv_path.exists() else ""
    return NdpiResult(parse_ndpi_flows(result.stdout), result.stdout, csv)


def ndpi_protocols() -> dict[str, str]:
    """Every protocol this nDPI knows, with its category (from the table ``ndpiReader -h`` prints)."""
    out = subprocess.run([NDPI_READER, "-h"], capture_output=True, text=True, check=False).stdout
    table = out.split("supported protocols:", 1)[-1]
    protocols: dict[str, str] = {}
    for line in table.splitlines():
        m = re.match(r"^\s*(\d+)\s+(\S+)\s+.*\s(\S+)\s*$", line)
        if m and line.strip()[0].isdigit() and len(line.split()) >= 3:
            protocols[m[2]] = m[3]
        if protocols and not line.strip():
            break
    return protocols


def vpn_protocols() -> list[str]:
    """The protocols nDPI files under its VPN category (4.2: IPsec, PPTP, OpenVPN, CiscoVPN, Tor,
    WireGuard, TINC, HotspotShield, FortiClient, iCloudPrivateRelay)."""
    return sorted(name for name, category in ndpi_protocols().items() if category == VPN_CATEGORY)


# ---- first packets


@dataclass(frozen=True)
class FirstPacket:
    """The first data-carrying packet the client sent on a flow."""

    l4: str
    client: str
    server: str
    payload: bytes

    def endpoints(self) -> frozenset[str]:
        return frozenset((self.client, self.server))

    def verdict(self) -> fet.Verdict:
        return fet.verdict(self.payload)


def endpoint(address: bytes, port: int) -> str:
    """An address and port written as ndpiReader writes them."""
    if len(address) == 16:
        return f"[{socket.inet_ntop(socket.AF_INET6, address)}]:{port}"
    return f"{socket.inet_ntop(socket.AF_INET, address)}:{port}"


def _mss(tcp: Any) -> int | None:
    for kind, data in dpkt.tcp.parse_opts(tcp.opts):
        if kind == dpkt.tcp.TCP_OPT_MSS and len(data) == 2:
            return int.from_bytes(data, "big")
    return None


def first_packets(pcap: Path) -> list[FirstPacket]:
    """Per TCP and UDP flow of an Ethernet capture, the client's first payload.

    The client of a TCP flow is the side that sent the SYN (flows whose start was not captured
    are left out); of a UDP flow, the side that sent first. A capture on a veth may hold segments
    the kernel has not split yet (GSO): a TCP payload is cut to the MSS the client announced, as
    the first packet on a real wire would be.
    """
    seen: set[frozenset[str]] = set()
    clients: dict[frozenset[str], tuple[str, int]] = {}
    out: list[FirstPacket] = []
    with pcap.open("rb") as f:
        reader = dpkt.pcap.Reader(f)
        if reader.datalink() != dpkt.pcap.DLT_EN10MB:
            raise RuntimeError(f"{pcap}: expected an Ethernet capture, got link type {reader.datalink()}")
        for _, buf in reader:
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                continue
            l4 = ip.data
            if isinstance(l4, dpkt.tcp.TCP):
                kind = "TCP"
            elif isinstance(l4, dpkt.udp.UDP):
                kind = "UDP"
            else:
                continue
            src, dst = endpoint(ip.src, l4.sport), endpoint(ip.dst, l4.dport)
            key = frozenset((kind + src, kind + dst))
            if key in seen:
                continue
            if kind == "TCP":
                if l4.flags & dpkt.tcp.TH_SYN and not l4.flags & dpkt.tcp.TH_ACK:
                    clients[key] = (src, _mss(l4) or 1460)
                    continue
                if key not in clients or clients[key][0] != src or not l4.data:
                    continue
                payload = bytes(l4.data)[: clients[key][1]]
            else:
                payload = bytes(l4.data)
                if not payload:
                    continue
            seen.add(key)
            out.append(FirstPacket(kind, src, dst, payload))
    return out


# ---- a carrier's session


@dataclass(frozen=True)
class Carrier:
    """How the client reaches the gateway: ``transport`` (udp, tcp, tls) on ``port``, with the
    obfuscation layer (docs/protocol.md 14) on or off."""

    transport: str
    port: int
    obfuscation: bool = False

    @property
    def name(self) -> str:
        return f"{self.transport}/{self.port}{' obfuscated' if self.obfuscation else ''}"


@dataclass
class FlowReport:
    """A flow of the capture: nDPI's classification and the FET verdict on its first packet."""

    ndpi: NdpiFlow | None
    first: FirstPacket | None

    @property
    def label(self) -> str:
        if self.ndpi is None:
            return "(not listed by ndpiReader)"
        return f"{self.ndpi.protocol} [{self.ndpi.category}; {self.ndpi.confidence}]"

    @property
    def verdict(self) -> fet.Verdict | None:
        return self.first.verdict() if self.first is not None else None


@dataclass
class CarrierReport:
    carrier: Carrier
    pcap: Path
    ndpi: NdpiResult
    firsts: list[FirstPacket]
    server: str
    """The gateway's endpoint of the carrier, as ndpiReader writes it."""
    summary: str = ""
    """tcpdump's one-line view of the capture's first packets (for the record)."""
    flows: list[FlowReport] = field(default_factory=list)

    def carrier_flows(self) -> list[FlowReport]:
        """The flows to the gateway's carrier endpoint."""
        return [
            f
            for f in self.flows
            if (f.ndpi is not None and self.server in (f.ndpi.a, f.ndpi.b))
            or (f.first is not None and f.first.server == self.server)
        ]


def join(ndpi: NdpiResult, firsts: list[FirstPacket]) -> list[FlowReport]:
    """Pair nDPI's flows with the first packets of the same endpoints (and transport)."""
    by_key = {(p.l4, p.endpoints()): p for p in firsts}
    reports = []
    used = set()
    for flow in ndpi.flows:
        key = (flow.l4, flow.endpoints())
        reports.append(FlowReport(flow, by_key.get(key)))
        used.add(key)
    reports += [FlowReport(None, p) for p in firsts if (p.l4, p.endpoints()) not in used]
    return reports


def analyse(carrier: Carrier, pcap: Path, server: str) -> CarrierReport:
    ndpi = classify(pcap)
    firsts = first_packets(pcap)
    summary = subprocess.run(
        ["tcpdump", "-r", str(pcap), "-n", "-c", "12"], capture_output=True, text=True, check=False
    ).stdout
    report = CarrierReport(carrier, pcap, ndpi, firsts, server, summary)
    report.flows = join(ndpi, firsts)
    return report


def start_web(topo: Topology, root: Path, size: int = 256 * 1024) -> str:
    """An HTTP server on the internet host serving ``size`` random bytes; returns the file's URL."""
    topo.serve_web(root, "blob.bin", os.urandom(size))
    return f"http://{netns.INTERNET_V4}:8080/blob.bin"


def session(topo: Topology, workdir: Path, carrier: Carrier) -> CarrierReport:
    """A client session on ``carrier`` in ``topo``, captured on the router and classified.

    The gateway listens for the carrier on its port (the others keep their usual ports; a TLS
    carrier gets a self-signed certificate whose name and pin the client is given);
    the client is held to the carrier's transport (with obfuscation where the carrier has it), connects,
    pings the internet host three times
    and fetches a 256 KB file, then leaves.
    """
    udp_port, tcp_port = 51820, 8443
    tls_port = 0
    if carrier.transport == "udp":
        udp_port = carrier.port
        tcp_port = 8443 if carrier.port != 8443 else 8444
    elif carrier.transport == "tcp":
        tcp_port = carrier.port
        udp_port = 51820 if carrier.port != 51820 else 51821
    else:
        tls_port = carrier.port
    deploy = Deployment(topo, workdir / "vg", udp_port=udp_port, tcp_port=tcp_port)
    if carrier.transport == "tls":
        deploy.enable_tls()
    url = start_web(topo, workdir / "www")
    pcap = workdir / f"{carrier.transport}-{carrier.port}.pcap"
    tls: dict[str, Any] = {"tls_port": tls_port} if tls_port else {}
    if carrier.obfuscation:
        tls["obfuscation"] = True
    deploy.start_gateway(**tls)
    try:
        with Capture(topo, topo.router, client_side_interface(topo), pcap):
            deploy.make_client("c1", transport=carrier.transport, **tls)
            deploy.start_client("c1")
            try:
                deploy.wait_client("c1", transport=carrier.transport, timeout=15)
                topo.ns_run(topo.client, "ping", "-c", "3", "-i", "0.2", "-W", "2", netns.INTERNET_V4)
                topo.ns_run(topo.client, "curl", "-sS", "--fail", "--max-time", "20", "-o", "/dev/null", url)
            finally:
                deploy.stop_client("c1")
    finally:
        with contextlib.suppress(KeyError):
            deploy.stop_gateway()
    return analyse(carrier, pcap, f"{netns.GATEWAY_V4}:{carrier.port}")


def veilgate_knows_transport(transport: str, workdir: Path, veilgate: list[str] | None = None) -> bool:
    """Whether this veilgate's client accepts ``transport = <transport>`` (``veilgate check``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "probe.key"
    write_key_file(key, KeyPair.generate().private_bytes())
    cred = workdir / "probe.cred"
    cred.write_text(encode_key(b"\0" * 64) + "\n")
    config = workdir / "probe.toml"
    config.write_text(
        "[client]\n"
        'gateway_host = "192.0.2.1"\n'
        f'gateway_public_key = "{encode_key(KeyPair.generate().public)}"\n'
        f'private_key_file = "{key}"\n'
        f'credential_file = "{cred}"\n'
        f'transport = "{transport}"\n'
        # What a TLS carrier needs besides (a name and a 32-byte pin); other transports ignore them.
        'tls_name = "www.example.org"\n'
        f'tls_pin = "{"00" * 32}"\n'
    )
    command = veilgate or [sys.executable, "-m", "veilgate"]
    result = subprocess.run(
        [*command, "check", "--config", str(config)], capture_output=True, text=True, check=False
    )
    return result.returncode == 0
