"""Pushed DNS: which way it goes (systemd-resolved or resolv.conf), what it runs, and the undo.

The systemd-resolved calls are checked here against a recorder; tests/e2e/test_desktop_dns.py
runs a real systemd-resolved and a real resolv.conf client in network namespaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from veilgate.tun import dns


def _recorder() -> tuple[list[list[str]], dns.Runner]:
    calls: list[list[str]] = []

    def run(args: Sequence[str]) -> None:
        calls.append(list(args))

    return calls, run


def test_resolved_is_used_only_when_resolv_conf_points_at_its_stub(tmp_path: Path) -> None:
    run_dir = tmp_path / "resolve"
    conf = tmp_path / "resolv.conf"
    conf.write_text("# stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n")
    assert not dns.uses_resolved(conf, run_dir)  # not running
    run_dir.mkdir()
    assert dns.uses_resolved(conf, run_dir)
    conf.write_text("nameserver 127.0.0.54\n")
    assert dns.uses_resolved(conf, run_dir)
    # The uplink file lists the real servers: glibc asks them directly, resolved is bypassed.
    conf.write_text("nameserver 192.0.2.53\nnameserver 127.0.0.53\n")
    assert not dns.uses_resolved(conf, run_dir)
    conf.unlink()
    assert not dns.uses_resolved(conf, run_dir)


def test_resolved_link_dns_routing_domain_default_route_and_revert(tmp_path: Path) -> None:
    calls, run = _recorder()
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\n")
    state = tmp_path / "state" / "client.dns"
    how = dns.apply_dns(["10.1.0.1", "fd00::1"], state, "vg0", conf, resolved=True, run=run)
    assert how == "systemd-resolved"
    assert calls == [
        ["dns", "vg0", "10.1.0.1", "fd00::1"],
        ["domain", "vg0", "~."],
        ["default-route", "vg0", "yes"],
    ]
    assert conf.read_text() == "nameserver 127.0.0.53\n"  # untouched
    # The state file alone tells a later start what to undo.
    calls.clear()
    dns.restore_dns(state, conf, run=run)
    assert calls == [["revert", "vg0"]]
    assert not state.exists() and conf.read_text() == "nameserver 127.0.0.53\n"


def test_resolved_failure_reverts_and_raises(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def run(args: Sequence[str]) -> None:
        calls.append(list(args))
        if args[0] == "domain":
            raise dns.DnsError("refused")

    state = tmp_path / "client.dns"
    with pytest.raises(dns.DnsError):
        dns.apply_dns(["10.1.0.1"], state, "vg0", tmp_path / "resolv.conf", resolved=True, run=run)
    assert calls[-1] == ["revert", "vg0"] and not state.exists()


def test_resolv_conf_rewritten_and_restored(tmp_path: Path) -> None:
    calls, run = _recorder()
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.53\n")
    state = tmp_path / "client.dns"
    assert dns.apply_dns(["10.1.0.1"], state, "vg0", conf, run=run) == "resolv.conf"
    assert conf.read_text() == dns.MARKER + "nameserver 10.1.0.1\n"
    dns.restore_dns(state, conf, run=run)
    assert conf.read_text() == "nameserver 192.0.2.53\n" and calls == []
