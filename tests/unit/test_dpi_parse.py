"""Parsing ndpiReader's per-flow lines (nDPI 4.2, ``-v 2``), on lines it printed."""

from __future__ import annotations

from veilgate.testing.dpi import parse_ndpi_flows

OUTPUT = """\
Detected protocols:
\tTLS                  packets: 18            bytes: 8394          flows: 1
\t1\tTCP 127.0.0.1:35048 <-> 127.0.0.1:4433 [proto: 91/TLS][Encrypted][Confidence: DPI][cat: Web/5]\
[9 pkts/1323 bytes <-> 9 pkts/7071 bytes][ALPN: h2;http/1.1]
\t2\tUDP 172.31.1.2:47408 <-> 172.31.2.2:51820 [proto: 206/WireGuard][Encrypted][Confidence: Match by port]\
[cat: VPN/2][12 pkts/2392 bytes <-> 10 pkts/1316 bytes]
\t3\tUDP [fd00:31:1::2]:5353 -> [ff02::fb]:5353 [proto: 8.178/MDNS.Amazon][ClearText][Confidence: DPI]\
[cat: Network/14][1 pkts/100 bytes -> 0 pkts/0 bytes]
Undetected flows:
\t1\tTCP 127.0.0.1:35064 <-> 127.0.0.1:4433 [proto: 0/Unknown][ClearText][Confidence: Unknown]\
[4 pkts/472 bytes <-> 4 pkts/272 bytes]
"""


def test_every_flow_line_is_parsed() -> None:
    flows = parse_ndpi_flows(OUTPUT)
    assert [(f.l4, f.protocol, f.category, f.confidence) for f in flows] == [
        ("TCP", "TLS", "Web", "DPI"),
        ("UDP", "WireGuard", "VPN", "Match by port"),
        ("UDP", "MDNS.Amazon", "Network", "DPI"),
        ("TCP", "Unknown", "Unspecified", "Unknown"),
    ]
    assert flows[1].endpoints() == {"172.31.1.2:47408", "172.31.2.2:51820"}
    assert flows[2].names == {"MDNS", "Amazon"} and flows[2].b == "[ff02::fb]:5353"
