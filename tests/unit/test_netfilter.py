"""nftables rule text (applied for real in the e2e tests)."""

from __future__ import annotations

import pytest

from veilgate.netfilter import kill_switch_rules, kill_switch_rules_for


def test_kill_switch_lets_out_only_loopback_the_tunnel_and_the_listed_endpoints() -> None:
    rules = kill_switch_rules_for(
        "vg0", [("198.51.100.7", "udp", 51820), ("2001:db8::7", "tcp", 443), ("198.51.100.7", "udp", 51820)]
    )
    assert "policy drop;" in rules
    assert 'oifname "lo" accept' in rules and 'oifname "vg0" accept' in rules
    assert rules.count("ip daddr 198.51.100.7 udp dport 51820 accept") == 1
    assert "ip6 daddr 2001:db8::7 tcp dport 443 accept" in rules
    assert kill_switch_rules("vg0", "198.51.100.7", 51820, 443) == kill_switch_rules_for(
        "vg0", [("198.51.100.7", "udp", 51820), ("198.51.100.7", "tcp", 443)]
    )


@pytest.mark.parametrize(
    "bad", [("198.51.100.7", "icmp", 1), ("198.51.100.7", "udp", 0), ("not-an-address", "tcp", 443)]
)
def test_kill_switch_refuses_a_bad_exception(bad: tuple[str, str, int]) -> None:
    with pytest.raises(ValueError):
        kill_switch_rules_for("vg0", [bad])


def test_kill_switch_keeps_the_link_alive_dhcp_and_ipv6_neighbour_discovery() -> None:
    rules = kill_switch_rules("vg0", "2001:db8::7", 51820, 443)
    assert "udp sport 68 udp dport 67 accept" in rules
    assert "udp sport 546 udp dport 547 accept" in rules
    for kind in ("nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert", "mld2-listener-report"):
        assert kind in rules
    assert "192.168" not in rules and "ff00::/8" not in rules  # no LAN unless allowed


def test_kill_switch_lets_out_the_allowed_lan_and_its_multicast() -> None:
    rules = kill_switch_rules("vg0", "198.51.100.7", 51820, 443, lan=["192.168.1.20/24", "2001:db8:1::5/64"])
    assert "ip daddr 192.168.1.0/24 accept" in rules
    assert "ip6 daddr 2001:db8:1::/64 accept" in rules
    assert "ip daddr 224.0.0.0/4 accept" in rules and "ip6 daddr fe80::/10 accept" in rules
