"""Obfuscation (docs/protocol.md 14) end to end: a client and a gateway with it on pass traffic over
UDP, fall back to TCP when UDP is blocked and return, on both data paths (conftest)."""

from __future__ import annotations

import pytest

from veilgate.testing import netns
from veilgate.testing.deploy import Deployment

from .test_vpn import ping

pytestmark = pytest.mark.e2e


def test_obfuscated_session_over_udp_falls_back_to_tcp_and_returns(
    deploy: Deployment, data_path: str
) -> None:
    topo = deploy.topo
    deploy.stop_gateway()
    deploy.start_gateway(obfuscation=True)
    deploy.make_client("c1", obfuscation=True, reprobe_interval=1.0)
    deploy.start_client("c1")
    status = deploy.wait_client("c1", transport="udp", timeout=10)
    assert status["data_path"] == data_path
    assert ping(topo, topo.client, netns.INTERNET_V4)
    topo.block_udp()
    deploy.wait_client("c1", transport="tcp", timeout=15)
    assert ping(topo, topo.client, netns.INTERNET_V4)
    assert deploy.gateway_status()["sessions_by_transport"] == {"tcp": 1}
    topo.unblock_udp()
    deploy.wait_client("c1", transport="udp", timeout=10)
    assert ping(topo, topo.client, netns.INTERNET_V6)
    switches = deploy.client_status("c1")["switches"]
    assert [s["to"] for s in switches] == ["udp", "tcp", "udp"]
    assert deploy.gateway_status()["sessions"] == 1


def test_a_client_without_obfuscation_gets_no_answer(deploy: Deployment) -> None:
    deploy.stop_gateway()
    deploy.start_gateway(obfuscation=True)
    deploy.make_client("c1", transport="udp")
    deploy.start_client("c1")
    with pytest.raises(TimeoutError):
        deploy.wait_client("c1", timeout=3)
    assert deploy.gateway_status()["sessions"] == 0
