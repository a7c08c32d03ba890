"""A gateway on the documented minimum configuration serves its clients a way out: it turns on
forwarding, NATs out of its default route's interface, and pushes its own tunnel address for DNS."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from veilgate.systemd.units import ensure_user
from veilgate.testing import Topology, netns
from veilgate.testing.deploy import Deployment

from .test_vpn import ping

pytestmark = pytest.mark.e2e


@pytest.fixture
def default_user() -> Iterator[None]:
    """The minimum configuration runs as the default user, which the operator creates first
    (`veilgate install-units --user`); removed again if this test made it."""
    created = ensure_user("veilgate")
    try:
        yield
    finally:
        if created:
            subprocess.run(["userdel", "veilgate"], capture_output=True, check=False)


@pytest.fixture
def bare(topo: Topology, tmp_path: Path, default_user: None) -> Iterator[Deployment]:
    """A deployment whose gateway host forwards nothing yet and has a default route toward the
    internet host, which knows no route back to the tunnel pools: only NAT brings answers home."""
    for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
        topo.sysctl(topo.gateway, key, "0")
    topo.ns_run(topo.gateway, "ip", "route", "add", "default", "via", netns.INTERNET_V4)
    topo.ns_run(topo.gateway, "ip", "-6", "route", "add", "default", "via", netns.INTERNET_V6)
    topo.ns_run(topo.internet, "ip", "route", "del", netns.TUNNEL_POOL_V4)
    topo.ns_run(topo.internet, "ip", "-6", "route", "del", netns.TUNNEL_POOL_V6)
    d = Deployment(topo, tmp_path / "vg", tcp_port=8443)  # the default ports
    try:
        yield d
    finally:
        for name in list(d.clients):
            d.stop_client(name)
        for name in list(d.gateways):
            d.stop_gateway(name)


def test_minimum_config_forwards_nats_and_pushes_dns(bare: Deployment) -> None:
    topo = bare.topo
    config = bare.gateway_config(minimal=True)
    assert set(config.read_text().split()) >= {"[gateway]", "[credentials]"}
    assert "nat" not in config.read_text() and "dns" not in config.read_text()
    bare.start_gateway(minimal=True)
    for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
        assert topo.ns_run(topo.gateway, "sysctl", "-n", key).stdout.strip() == "1", key
    rules = topo.ns_run(topo.gateway, "nft", "list", "table", "inet", f"veilgate_{bare.gateway_tun}").stdout
    assert f'oifname "{bare.gateway_internet_interface}" masquerade' in rules

    bare.start_client("c1")
    status = bare.wait_client("c1")
    assert status["transport"] == "udp"
    assert ping(topo, topo.client, netns.INTERNET_V4)
    assert ping(topo, topo.client, netns.INTERNET_V6)
    resolv = (Path("/etc/netns") / topo.client / "resolv.conf").read_text()
    assert "nameserver 10.201.0.1\nnameserver fd7a:201::1\n" in resolv
    log = (bare.dir / "gateway.log").read_text()
    assert f"NAT out of {bare.gateway_internet_interface}" in log
    assert "no resolver listens on port 53 there" in log  # none runs in this test


def test_nat_without_a_default_route_stops_with_one_line(
    topo: Topology, tmp_path: Path, default_user: None
) -> None:
    deploy = Deployment(topo, tmp_path / "vg")
    config = deploy.gateway_config(minimal=True)
    result = topo.ns_run(topo.gateway, *deploy.veilgate, "gateway", "--config", str(config), check=False)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{config}: gateway.nat_interface: not set" in lines[0] and "no default route" in lines[0]
    links = topo.ns_run(topo.gateway, "ip", "-o", "link").stdout
    assert deploy.gateway_tun not in links  # it stopped before changing anything
