"""A gateway with two workers on real namespaces: steering, relay, handoff, restart."""

from __future__ import annotations

import ipaddress
import os
import signal
import time
from typing import Any

import pytest

from veilgate.gateway.worker import worker_status_socket
from veilgate.testing import netns
from veilgate.testing.deploy import Deployment, wait_for

from .test_vpn import ping

pytestmark = pytest.mark.e2e

N = 2


@pytest.fixture
def workers(deploy: Deployment) -> Deployment:
    """The deployment's gateway again, with two workers."""
    deploy.stop_gateway()
    deploy.start_gateway(workers=N, log_level="debug")
    wait_for(lambda: deploy.gateway_status().get("workers_running") == N, 20, "both workers")
    return deploy


def worker_status(deploy: Deployment, k: int) -> dict[str, Any]:
    return deploy.status(worker_status_socket(deploy.gateway_socket, k))


def owner(address: str) -> int:
    return int(ipaddress.ip_address(address.split("/", maxsplit=1)[0])) % N


def worker_pids(deploy: Deployment) -> list[int]:
    """The workers' process ids, in worker order."""
    pids: list[int] = deploy.gateway_status()["worker_pids"]
    return pids


def clients_on_both_workers(deploy: Deployment, limit: int = 9) -> dict[int, str]:
    """Start clients (each in its own namespace) until each worker holds a session: worker -> the
    namespace of a client on it. A new session lands where the kernel's hash of the client's
    address and port sends its first message."""
    topo = deploy.topo
    on: dict[int, str] = {}
    for i in range(1, limit + 1):
        name = f"c{i}"
        ns = topo.client
        if i > 1:
            ns, _ = topo.add_client(i)
            deploy.make_client(name)
        deploy.start_client(name, ns=ns)
        status = deploy.wait_client(name)
        on.setdefault(owner(status["ipv4"]), ns)
        if len(on) == N:
            return on
    raise AssertionError(f"{limit} clients all landed on worker {next(iter(on))}")


def test_sessions_on_both_workers_each_owns_its_addresses(workers: Deployment) -> None:
    deploy = workers
    on = clients_on_both_workers(deploy)
    for name in deploy.clients:
        status = deploy.client_status(name)
        assert owner(status["ipv4"]) == owner(status["ipv6"]), status
    for ns in on.values():
        assert ping(deploy.topo, ns, netns.INTERNET_V4)
        assert ping(deploy.topo, ns, netns.INTERNET_V6)
    per_worker = [worker_status(deploy, k) for k in range(N)]
    assert all(s["sessions"] >= 1 for s in per_worker)
    merged = deploy.gateway_status()
    assert merged["sessions"] == sum(s["sessions"] for s in per_worker) == len(deploy.clients)
    # The kernel steered every packet to its owner: nothing went over the relay.
    assert all(s["counters"].get("relayed-out", 0) == 0 for s in per_worker), [
        s["counters"] for s in per_worker
    ]


def test_udp_to_tcp_across_workers_keeps_the_session(workers: Deployment) -> None:
    """The worker holding the session is paused while the client moves to TCP: the other worker
    accepts the connection, reads the handshake and hands the session's keys over."""
    deploy = workers
    topo = deploy.topo
    deploy.make_client("c1", udp_grace=0.3)
    deploy.start_client("c1")
    before = deploy.wait_client("c1")
    k = owner(before["ipv4"])
    pid = worker_pids(deploy)[k]
    os.kill(pid, signal.SIGSTOP)
    try:
        topo.block_udp()
        # The client stalls on UDP and moves to a stream; only the other worker accepts now.
        wait_for(
            lambda: worker_status(deploy, 1 - k)["tcp_connections"] >= 1, 30, "the other worker to accept"
        )
        time.sleep(0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    after = deploy.wait_client("c1", transport="tcp", timeout=30)
    assert after["ipv4"] == before["ipv4"], "the session and its address survived the move"
    assert ping(topo, topo.client, netns.INTERNET_V4)
    other = worker_status(deploy, 1 - k)["counters"]
    mine = worker_status(deploy, k)["counters"]
    assert other.get("handoffs-out", 0) >= 1 and mine.get("handoffs-in", 0) >= 1, (other, mine)
    assert other.get("relayed-out", 0) > 0, "the connection's datagrams went to the owner"
    assert deploy.gateway_status()["sessions"] == 1


def test_a_dead_worker_is_restarted_and_the_others_sessions_go_on(workers: Deployment) -> None:
    deploy = workers
    topo = deploy.topo
    on = clients_on_both_workers(deploy)
    survivor, victim = on[0], on[1]
    opened = worker_status(deploy, 0)["totals"]["sessions_opened"]
    pid = worker_pids(deploy)[1]
    os.kill(pid, signal.SIGKILL)
    assert ping(topo, survivor, netns.INTERNET_V4, count=5)
    wait_for(
        lambda: (
            deploy.gateway_status().get("worker_restarts") == 1
            and deploy.gateway_status().get("workers_running") == N
        ),
        20,
        "the worker to be started again",
    )
    assert worker_pids(deploy)[1] != pid
    # The survivor's session is the same one; the victim's client made a new one on the new worker.
    wait_for(lambda: ping(topo, victim, netns.INTERNET_V4, count=1, timeout=1), 40, "victim back")
    assert ping(topo, survivor, netns.INTERNET_V4)
    assert worker_status(deploy, 0)["totals"]["sessions_opened"] == opened, "worker 0's sessions went on"
