"""What deep packet inspection says about each carrier: ``make dpi``. Not a test; run as root.

For each carrier (UDP on 51820, 443 and 1194; plain TCP on its port 8443, on 443 and on 1194;
TLS on 443 when this veilgate has it) a session runs in network namespaces (connect, three pings, a 256 KB download)
while the router captures; then nDPI's ndpiReader classifies each flow and the published rules for
fully encrypted traffic (Wu et al., USENIX Security 2023) judge the first packet the client sent
on it. Prints one block per carrier; the raw ndpiReader output and a summary of each capture are
kept in bench/results/dpi-<date>.txt.
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
from pathlib import Path

from veilgate.testing import Topology, dpi

HERE = Path(__file__).resolve().parent
CARRIERS = [
    dpi.Carrier("udp", 51820),
    dpi.Carrier("udp", 443),
    dpi.Carrier("udp", 1194),
    dpi.Carrier("tcp", 443),
    dpi.Carrier("tcp", 8443),
    dpi.Carrier("tcp", 1194),
    dpi.Carrier("tls", 443),
    dpi.Carrier("udp", 51820, obfuscation=True),
    dpi.Carrier("udp", 1194, obfuscation=True),
    dpi.Carrier("tcp", 8443, obfuscation=True),
    dpi.Carrier("tcp", 1194, obfuscation=True),
]


def block(report: dpi.CarrierReport, vpns: set[str]) -> list[str]:
    lines = [f"== {report.carrier.name}"]
    flows = report.carrier_flows()
    if not flows:
        lines.append("   no flow to the gateway's carrier endpoint was captured")
    for flow in flows:
        vpn = " <- a VPN protocol" if flow.ndpi is not None and flow.ndpi.names & vpns else ""
        lines.append(f"   nDPI: {flow.label}{vpn}")
        verdict = flow.verdict
        note = "" if report.carrier.transport != "udp" else " (the rules are for TCP; shown for UDP too)"
        lines.append(f"   FET first packet: {verdict.summary() if verdict else 'no data packet'}{note}")
    return lines


def main() -> int:
    if os.geteuid() != 0:
        print("make dpi needs root (network namespaces, TUN, tcpdump)", file=sys.stderr)
        return 1
    vpns = set(dpi.vpn_protocols())
    today = datetime.date.today().isoformat()
    header = [
        f"veilgate DPI report {today}: nDPI {dpi.ndpi_version()} (ndpiReader), FET rules of Wu et al. 2023",
        f"nDPI's VPN protocols: {', '.join(sorted(vpns))}",
        "",
    ]
    print("\n".join(header), flush=True)
    out: list[str] = list(header)
    raw: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vg-dpi-") as tmp:
        for carrier in CARRIERS:
            work = Path(tmp) / f"{carrier.transport}-{carrier.port}{'-obfs' if carrier.obfuscation else ''}"
            if carrier.transport not in ("udp", "tcp") and not dpi.veilgate_knows_transport(
                carrier.transport, work / "probe"
            ):
                lines = [
                    f"== {carrier.name}",
                    f"   skipped: this veilgate has no {carrier.transport} carrier",
                ]
            else:
                try:
                    with Topology() as topo:
                        report = dpi.session(topo, work, carrier)
                except Exception as exc:  # a carrier that does not come up is reported, not fatal
                    lines = [f"== {carrier.name}", f"   could not run: {str(exc).splitlines()[0]}"]
                else:
                    lines = block(report, vpns)
                    raw += [
                        f"#### {carrier.name}: tcpdump -r {report.pcap.name} -n (first packets)",
                        report.summary.rstrip(),
                        f"#### {carrier.name}: ndpiReader -i {report.pcap.name} -v 2",
                        report.ndpi.text.rstrip(),
                        f"#### {carrier.name}: ndpiReader -C (CSV; detected flows only)",
                        report.ndpi.csv.rstrip(),
                        "",
                    ]
            print("\n".join(lines), flush=True)
            out += lines
    results = HERE / "results" / f"dpi-{today}.txt"
    results.parent.mkdir(exist_ok=True)
    results.write_text("\n".join([*out, "", "######## raw output", *raw]) + "\n")
    print(f"\nraw output: {results.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
