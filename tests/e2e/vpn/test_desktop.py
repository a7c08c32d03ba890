"""The client on a desktop or laptop: DNS through the tunnel (resolv.conf and systemd-resolved),
with a real resolver on each side and a capture on the client's own link."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
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
        if os.environ.get("VEILGATE_REQUIRE_TOOLS") == "1":
            pytest.fail(f"VEILGATE_REQUIRE_TOOLS=1 but the test {reason}")
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


def _ping(topo: Topology, address: str, *extra: str, count: int = 1, wait: float = 1) -> bool:
    cmd = ["ping", "-6" if ":" in address else "-4", "-c", str(count), "-i", "0.2", "-W", str(wait)]
    return topo.ns_run(topo.client, *cmd, *extra, address, check=False).returncode == 0


def test_client_follows_a_move_to_a_new_network_with_the_same_session(deploy: Deployment) -> None:
    """A laptop moves: a new interface, address and router; the old link goes, mid-transfer."""
    topo = deploy.topo
    deploy.start_client("c1")
    before = deploy.wait_client("c1")
    established = deploy.gateway_status()["counters"]["sessions-established"]
    pinger = topo.spawn(
        topo.client,
        "ping",
        "-4",
        "-i",
        "0.05",
        "-W",
        "1",
        netns.INTERNET_V4,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert _ping(topo, netns.INTERNET_V4)
    # The new network: another link to the router, another subnet, another next hop.
    new_c, new_r = f"vg{topo.tag}c9", f"vg{topo.tag}r9"
    run = topo.ns_run
    run(topo.client, "ip", "link", "add", new_c, "type", "veth", "peer", "name", new_r, "netns", topo.router)
    run(topo.router, "ip", "addr", "add", "172.31.40.1/24", "dev", new_r)
    run(topo.router, "ip", "link", "set", new_r, "up")
    run(topo.gateway, "ip", "route", "add", "172.31.40.0/24", "via", netns.ROUTER_G_V4)
    run(topo.client, "ip", "addr", "add", "172.31.40.2/24", "dev", new_c)
    run(topo.client, "ip", "link", "set", new_c, "up")
    run(topo.client, "ip", "link", "del", f"vg{topo.tag}c0")  # the old network goes
    run(topo.client, "ip", "route", "replace", "default", "via", "172.31.40.1")
    moved = time.monotonic()
    while not _ping(topo, netns.INTERNET_V4, wait=0.3):
        assert time.monotonic() - moved < 5, (deploy.dir / "c1.log").read_text()
    took = time.monotonic() - moved
    topo.stop(pinger)
    after = deploy.client_status("c1")
    gw = deploy.gateway_status()
    assert after["ipv4"] == before["ipv4"] and after["connected"] and after["transport"] == "udp"
    assert gw["counters"]["sessions-established"] == established and gw["sessions"] == 1
    assert after["counters"].get("network-changes", 0) >= 1
    assert took < 3, took
    assert _ping(topo, netns.INTERNET_V4, count=3)
    print(f"traffic through the tunnel again {took:.2f} s after the move")


def test_ipv6_only_network_gateway_by_name_kill_switch_with_the_lan_allowed(
    deploy: Deployment, tmp_path: Path
) -> None:
    """An IPv6-only network: the gateway named in /etc/hosts with a v4 and a v6 address, the kill
    switch on with ``allow_lan``: neighbour discovery works, the LAN is reachable, nothing else."""
    topo = deploy.topo
    deploy.stop_gateway()
    deploy.start_gateway(listen6=netns.GATEWAY_V6)
    (Path("/etc/netns") / topo.client / "hosts").write_text(
        f"127.0.0.1 localhost\n{netns.GATEWAY_V4} gw.vg.test\n{netns.GATEWAY_V6} gw.vg.test\n"
    )
    underlay = f"vg{topo.tag}c0"
    topo.ns_run(topo.client, "ip", "-4", "addr", "flush", "dev", underlay)
    assert _ping(topo, netns.ROUTER_G_V6)  # outside the LAN, reachable without the kill switch
    deploy.make_client("c1", gateway_host="gw.vg.test", kill_switch=True)
    deploy.start_client("c1")
    # Neighbour discovery again on both ends, under the switch.
    topo.ns_run(topo.client, "ip", "-6", "neigh", "flush", "dev", underlay)
    topo.ns_run(topo.router, "ip", "-6", "neigh", "flush", "dev", f"vg{topo.tag}r0")
    deploy.wait_client("c1")
    sockets = topo.ns_run(topo.client, "ss", "-Hun", "dst", f"[{netns.GATEWAY_V6}]").stdout
    assert f"[{netns.GATEWAY_V6}]:{deploy.udp_port}" in sockets, sockets
    assert _ping(topo, netns.INTERNET_V4, count=2) and _ping(topo, netns.INTERNET_V6, count=2)
    assert not _ping(topo, netns.ROUTER_C_V6)  # the LAN, not allowed
    assert not _ping(topo, netns.ROUTER_G_V6, "-I", underlay)  # outside the tunnel
    deploy.stop_client("c1")
    # With the LAN allowed: the LAN is reachable, the rest still only through the tunnel.
    deploy.make_client("c1", gateway_host="gw.vg.test", kill_switch=True, allow_lan=True)
    deploy.start_client("c1")
    deploy.wait_client("c1")
    assert _ping(topo, netns.ROUTER_C_V6)
    assert not _ping(topo, netns.ROUTER_G_V6, "-I", underlay)
    deploy.stop_client("c1")
    assert _ping(topo, netns.ROUTER_G_V6, "-I", underlay)
