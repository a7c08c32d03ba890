"""nftables rules, applied through the ``nft`` command, one table per owner.

Each owner (the gateway's NAT and isolation, the client's kill switch, a test
router's UDP block) owns one ``inet`` table and replaces it atomically: the
whole table is deleted and recreated in one ``nft -f`` transaction.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from collections.abc import Iterable

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


class NftError(Exception):
    pass


class NftTable:
    def __init__(self, name: str, netns: str | None = None) -> None:
        if not _NAME.match(name):
            raise ValueError(f"bad nftables table name {name!r}")
        self.name = name
        self.netns = netns

    def _nft(self, script: str) -> None:
        nft = shutil.which("nft")
        if nft is None:
            raise NftError("the nft command is missing: apt-get install nftables")
        cmd = [nft, "-f", "-"]
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        result = subprocess.run(cmd, input=script, text=True, capture_output=True, check=False)
        if result.returncode != 0:
            raise NftError(f"nft refused the rules for table {self.name}: {result.stderr.strip()}")

    def apply(self, body: str) -> None:
        """Replace the table with ``body`` (chains and sets) in one transaction."""
        reset = f"table inet {self.name} {{}}\ndelete table inet {self.name}\n"
        self._nft(f"{reset}table inet {self.name} {{\n{body}}}\n")

    def delete(self) -> None:
        self._nft(f"table inet {self.name} {{}}\ndelete table inet {self.name}\n")


def gateway_isolation_rules(tun: str) -> str:
    """Clients cannot reach each other through the gateway (defence in depth; the daemon also drops)."""
    return (
        "  chain forward_isolation {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f'    iifname "{tun}" oifname "{tun}" drop\n'
        "  }\n"
    )


def gateway_nat_rules(pools: list[str], out_interface: str) -> str:
    """Masquerade traffic from the tunnel pools leaving by ``out_interface``."""
    lines = []
    for pool in pools:
        family = "ip" if ipaddress.ip_network(pool).version == 4 else "ip6"
        lines.append(f'    {family} saddr {pool} oifname "{out_interface}" masquerade\n')
    return (
        "  chain postrouting_nat {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n" + "".join(lines) + "  }\n"
    )


def kill_switch_rules(tun: str, gateway: str, udp_port: int, tcp_port: int, lan: Iterable[str] = ()) -> str:
    """While active, nothing leaves but loopback, the tunnel, and the client's traffic to the gateway."""
    return kill_switch_rules_for(tun, [(gateway, "udp", udp_port), (gateway, "tcp", tcp_port)], lan)


LAN_MULTICAST = ("224.0.0.0/4", "ff00::/8", "fe80::/10")
"""With the LAN allowed: link-local multicast discovery (mDNS, SSDP) and IPv6 link-local peers."""


def kill_switch_rules_for(tun: str, allowed: Iterable[tuple[str, str, int]], lan: Iterable[str] = ()) -> str:
    """The kill switch with a list of (address, "udp" or "tcp", port) the client itself may reach
    outside the tunnel: the gateway it uses, or in provider mode the provider and every gateway
    of its document, so that the switch stays on across a failover.

    What the machine needs to keep its own network link is let out too: DHCP (v4 and v6) and IPv6
    neighbour discovery, router solicitation and MLDv2 reports. ``lan``: the directly connected
    networks the user allows (``allow_lan``); with any, link-local multicast is allowed as well.
    """
    lines = []
    for address, proto, port in sorted(set(allowed)):
        if proto not in ("udp", "tcp") or not 0 < port < 65536:
            raise ValueError(f"bad kill-switch exception {proto} {address} port {port}")
        family = "ip" if ipaddress.ip_address(address).version == 4 else "ip6"
        lines.append(f"    {family} daddr {address} {proto} dport {port} accept\n")
    nets = sorted({ipaddress.ip_network(n, strict=False) for n in lan}, key=lambda n: (n.version, n))
    if nets:
        nets += [ipaddress.ip_network(n) for n in LAN_MULTICAST if ipaddress.ip_network(n) not in nets]
    for net in nets:
        lines.append(f"    {'ip' if net.version == 4 else 'ip6'} daddr {net} accept\n")
    return (
        "  chain output_killswitch {\n"
        "    type filter hook output priority filter; policy drop;\n"
        '    oifname "lo" accept\n'
        f'    oifname "{tun}" accept\n'
        "    meta nfproto ipv4 udp sport 68 udp dport 67 accept\n"
        "    meta nfproto ipv6 udp sport 546 udp dport 547 accept\n"
        "    icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit,"
        " nd-neighbor-advert, mld2-listener-report } accept\n" + "".join(lines) + "  }\n"
        "  chain forward_killswitch {\n"
        "    type filter hook forward priority filter; policy drop;\n"
        f'    oifname "{tun}" accept\n'
        f'    iifname "{tun}" ct state established,related accept\n'
        "  }\n"
    )


def block_udp_rules() -> str:
    """Drop every forwarded UDP datagram: a hostile network, for tests and the demo."""
    return (
        "  chain forward_block_udp {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        "    meta l4proto udp drop\n"
        "  }\n"
    )
