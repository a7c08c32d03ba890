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
