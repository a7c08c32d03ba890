"""The client on a desktop or laptop: DNS through the tunnel (resolv.conf and systemd-resolved),
with a real resolver on each side and a capture on the client's own link."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from veilgate.testing import Topology, netns
from veilgate.testing.deploy import Deployment
from veilgate.testing.desktop import Capture, ResolvedNamespace, missing_resolved, start_dnsmasq

pytestmark = pytest.mark.e2e

TUNNEL_DNS = "10.201.0.1"
"""The DNS server the test gateway pushes (its own tunnel address)."""


def _lookup(topo: Topology, ns: str, name: str, enter: tuple[str, ...] = ()) -> str:
    out = topo.ns_run(ns, *enter, "getent", "ahostsv4", name, check=False, timeout=20).stdout
    return out.split()[0] if out.strip() else ""


def _queries(log: Path) -> int:
    return log.read_text().count("query[") if log.exists() else 0


@pytest.fixture
def resolvers(deploy: Deployment, tmp_path: Path) -> tuple[Path, Path]:
    """dnsmasq behind the tunnel (on the gateway's tunnel address, answering with the internet host)
    and a "leak" dnsmasq on the client's own network (the router, answering with its address)."""
    if any(shutil.which(t) is None for t in ("dnsmasq", "tcpdump", "getent")):
        pytest.skip("needs dnsmasq and tcpdump (make deps installs them)")
    topo = deploy.topo
    tunnel_log, leak_log = tmp_path / "tunnel-dns.log", tmp_path / "leak-dns.log"
    start_dnsmasq(topo, topo.gateway, TUNNEL_DNS, {"vg.test": netns.INTERNET_V4}, tunnel_log)
    start_dnsmasq(topo, topo.router, netns.ROUTER_C_V4, {"vg.test": netns.ROUTER_C_V4}, leak_log)
    return tunnel_log, leak_log


def test_resolv_conf_dns_goes_through_the_tunnel_and_nothing_leaks(
    deploy: Deployment, resolvers: tuple[Path, Path], tmp_path: Path
) -> None:
    topo = deploy.topo
    tunnel_log, leak_log = resolvers
    resolv_conf = Path("/etc/netns") / topo.client / "resolv.conf"
    resolv_conf.write_text(f"nameserver {netns.ROUTER_C_V4}\n")
    # Before the tunnel the network's own resolver answers (the capture below would see it).
    assert _lookup(topo, topo.client, "before.vg.test") == netns.ROUTER_C_V4
    leaked_before = _queries(leak_log)
    capture = Capture(topo, topo.client, f"vg{topo.tag}c0", "port 53", tmp_path / "dns.pcap")
    deploy.start_client("c1")
    deploy.wait_client("c1")
    for name in ("a.vg.test", "b.vg.test", "www.c.vg.test"):
        assert _lookup(topo, topo.client, name) == netns.INTERNET_V4, name
    assert capture.packets() == []
    assert _queries(tunnel_log) >= 3 and _queries(leak_log) == leaked_before
    assert "DNS through the tunnel (resolv.conf)" in (deploy.dir / "c1.log").read_text()
    deploy.stop_client("c1")
    assert resolv_conf.read_text() == f"nameserver {netns.ROUTER_C_V4}\n"


def test_systemd_resolved_link_dns_goes_through_the_tunnel_and_nothing_leaks(
    deploy: Deployment, resolvers: tuple[Path, Path], tmp_path: Path
) -> None:
    reason = missing_resolved()
    if reason:
        pytest.skip(reason)
    topo = deploy.topo
    tunnel_log, leak_log = resolvers
    underlay = f"vg{topo.tag}c0"
    resolved = ResolvedNamespace(topo, topo.client, tmp_path / "resolved")
    # The network's resolver on the client's own link, as DHCP would set it.
    resolved.resolvectl("dns", underlay, netns.ROUTER_C_V4)
    assert _lookup(topo, topo.client, "before.vg.test", resolved.enter) == netns.ROUTER_C_V4
    leaked_before = _queries(leak_log)
    capture = Capture(topo, topo.client, underlay, "port 53", tmp_path / "dns.pcap")
    env = dict(os.environ, PATH=f"{resolved.bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    deploy.start_client("c1", prefix=resolved.enter, env=env)
    deploy.wait_client("c1")
    tun = f"vgu{topo.tag}c1"
    status = resolved.resolvectl("status", tun).stdout
    assert TUNNEL_DNS in status and "~." in status and "+DefaultRoute" in status, status
    for name in ("a.vg.test", "b.vg.test", "www.c.vg.test"):
        assert _lookup(topo, topo.client, name, resolved.enter) == netns.INTERNET_V4, name
    assert capture.packets() == []
    assert _queries(tunnel_log) >= 3 and _queries(leak_log) == leaked_before
    assert "DNS through the tunnel (systemd-resolved)" in (deploy.dir / "c1.log").read_text()
    # /etc/resolv.conf was left alone: it still points at resolved's stub.
    assert "127.0.0.53" in (Path("/etc/netns") / topo.client / "resolv.conf").read_text()
    deploy.stop_client("c1")
    assert _lookup(topo, topo.client, "after.vg.test", resolved.enter) == netns.ROUTER_C_V4
