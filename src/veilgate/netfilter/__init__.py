"""Firewall rules with nftables: gateway NAT and client isolation, client kill switch, UDP blocking."""

from veilgate.netfilter.nft import (
    NftError,
    NftTable,
    block_udp_rules,
    gateway_isolation_rules,
    gateway_nat_rules,
    kill_switch_rules,
    kill_switch_rules_for,
)

__all__ = [
    "NftError",
    "NftTable",
    "block_udp_rules",
    "gateway_isolation_rules",
    "gateway_nat_rules",
    "kill_switch_rules",
    "kill_switch_rules_for",
]
