"""The daemons under a service manager: readiness, watchdog, status lines, the privilege drop, reload.

Each daemon runs with NOTIFY_SOCKET naming this test's own datagram socket, as systemd would
start it, and as the unprivileged user ``nobody``: at READY=1 the service already works, the
process keeps only the capabilities it needs, and exit still undoes everything.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from veilgate.config import read_key_file
from veilgate.config.keys import encode_key
from veilgate.credentials import IssuerKey, issue
from veilgate.protocol.crypto import KeyPair
from veilgate.testing import Topology, netns
from veilgate.testing.deploy import Deployment, wait_for

USER = "nobody"
CAP_DAC_OVERRIDE = 1 << 1
CAP_NET_ADMIN = 1 << 12
ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+|[0-9a-f]*:[0-9a-f]*:[0-9a-f:]*")


class Notifications:
    """The service manager's end of NOTIFY_SOCKET: a datagram socket collecting messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o777)
        self.messages: list[dict[str, str]] = []

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = dict(os.environ, NOTIFY_SOCKET=str(self.path))
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def wait(self, key: str, timeout: float, log: Path | None = None) -> dict[str, str]:
        """The next message carrying ``key`` (the ones before it are kept in ``messages``)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            message = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(message)
            if key in message:
                return message
        tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
        raise TimeoutError(f"no {key}= notification within {timeout} s; got {self.messages}\n{tail}")

    def statuses(self) -> list[str]:
        return [m["STATUS"] for m in self.messages if "STATUS" in m]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A folder ``nobody`` can traverse (pytest's own are root's alone), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="vgsvc"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def notify(workdir: Path) -> Iterator[Notifications]:
    n = Notifications(workdir / "notify.sock")
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def service_deploy(topo: Topology, workdir: Path) -> Iterator[Deployment]:
    d = Deployment(topo, workdir / "vg")
    d.dir.chmod(0o755)
    try:
        yield d
    finally:
        for name in list(d.clients):
            d.stop_client(name)
        for name in list(d.gateways):
            d.stop_gateway(name)
        if d.provider_proc is not None:
            d.stop_provider()


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def assert_dropped(pid: int, caps: int) -> None:
    status = proc_status(pid)
    uid = str(pwd.getpwnam(USER).pw_uid)
    assert status["Uid"].split() == [uid] * 4, status["Uid"]
    assert int(status["CapEff"], 16) == caps, status["CapEff"]
    assert int(status["CapPrm"], 16) == caps, status["CapPrm"]
    assert status["NoNewPrivs"] == "1"


def ping(topo: Topology, ns: str, address: str) -> bool:
    return topo.ns_run(ns, "ping", "-c", "1", "-W", "2", address, check=False).returncode == 0


HANDSHAKE = r"""
import base64, json, sys
from veilgate.protocol.crypto import KeyPair
from veilgate.testing.rawclient import RawClient
args = json.loads(sys.argv[1])
key = KeyPair.from_private_bytes(base64.b64decode(args["key"]))
raw = RawClient((args["host"], args["port"]), base64.b64decode(args["gateway"]), key,
                base64.b64decode(args["credential"]))
print("connected" if raw.connect(5.0) else "no answer")
raw.close_session()
"""


def handshake(deploy: Deployment, issuer: IssuerKey) -> str:
    """A bare handshake from the client host with a credential of ``issuer``: does the gateway answer?"""
    key = KeyPair.generate()
    credential = issue(issuer, key.public, time.time(), lifetime=600, granularity=1)
    args = {
        "key": encode_key(key.private_bytes()),
        "host": netns.GATEWAY_V4,
        "port": deploy.udp_port,
        "gateway": encode_key(deploy.gateway_key.public),
        "credential": encode_key(credential.encode()),
    }
    topo = deploy.topo
    result = topo.ns_run(topo.client, sys.executable, "-c", HANDSHAKE, json.dumps(args), timeout=30)
    return result.stdout.strip()


def test_gateway_ready_watchdog_drop_and_reload(service_deploy: Deployment, notify: Notifications) -> None:
    deploy, topo = service_deploy, service_deploy.topo
    deploy.user = USER
    deploy.env = notify.env(watchdog_usec=400_000)
    proc = deploy.start_gateway()
    log = deploy.dir / "gateway.log"
    ready = notify.wait("READY", 15, log)
    # At READY=1 the TUN device is up and the UDP port answers a handshake.
    assert topo.ns_run(topo.gateway, "ip", "link", "show", deploy.gateway_tun, check=False).returncode == 0
    assert handshake(deploy, deploy.issuer) == "connected"
    assert "sessions" in ready["STATUS"]
    notify.wait("WATCHDOG", 2, log)
    assert_dropped(proc.pid, CAP_NET_ADMIN)

    # The tunnel works under the dropped daemon.
    deploy.env = None
    deploy.user = "root"
    deploy.start_client("c1")
    deploy.wait_client("c1")
    assert ping(topo, topo.client, "10.201.0.1")

    # Reload: a new issuer's key, added to the file, is accepted without a restart; the live
    # session keeps passing traffic meanwhile.
    new_issuer = IssuerKey.generate()
    assert handshake(deploy, new_issuer) == "no answer"
    keys = [encode_key(k.public_key().to_bytes()) for k in (deploy.issuer, new_issuer)]
    config = deploy.dir / "gateway.toml"
    text = config.read_text()
    config.write_text(
        re.sub(r"issuer_public_keys = \[.*\]", f"issuer_public_keys = {json.dumps(keys)}", text)
    )
    config.write_text(config.read_text().replace('tun_name = "', 'tun_name = "x', 1))
    proc.send_signal(signal.SIGHUP)
    notify.wait("RELOADING", 5, log)
    notify.wait("READY", 5, log)
    assert "tun_name changed: restart to apply" in log.read_text()
    assert handshake(deploy, new_issuer) == "connected"
    deploy.make_client("c2")
    (deploy.dir / "c2.cred").write_text(
        encode_key(
            issue(new_issuer, _public_of(deploy, "c2"), time.time(), lifetime=600, granularity=1).encode()
        )
        + "\n"
    )
    ns2, _ = topo.add_client(2)
    deploy.start_client("c2", ns=ns2)
    deploy.wait_client("c2")
    assert ping(topo, ns2, "10.201.0.1")
    assert ping(topo, topo.client, "10.201.0.1")

    # A broken file on reload: one error line, everything keeps running as it was.
    config.write_text("[gateway]\nudp_port = 'fifty'\n")
    proc.send_signal(signal.SIGHUP)
    notify.wait("READY", 5, log)
    errors = [line for line in log.read_text().splitlines() if "reload refused" in line]
    assert len(errors) == 1 and "gateway.toml" in errors[0]
    assert proc.poll() is None
    assert ping(topo, topo.client, "10.201.0.1")
    assert deploy.gateway_status()["sessions"] == 2

    deploy.stop_client("c1")
    deploy.stop_client("c2")
    assert deploy.stop_gateway() == 0
    notify.wait("STOPPING", 2)
    # The dropped gateway still removed its firewall table at exit (nft with the kept capability).
    tables = topo.ns_run(topo.gateway, "nft", "list", "tables").stdout
    assert "veilgate_" not in tables
    statuses = notify.statuses()
    assert statuses and not any(ADDRESS.search(s) for s in statuses), statuses


def _public_of(deploy: Deployment, name: str) -> bytes:
    return KeyPair.from_private_bytes(read_key_file(deploy.dir / f"{name}.key", "key")).public


def test_client_ready_when_the_tunnel_works_and_exit_restores_all(
    service_deploy: Deployment, notify: Notifications
) -> None:
    deploy, topo = service_deploy, service_deploy.topo
    deploy.start_gateway()
    deploy.user = USER
    deploy.env = notify.env(watchdog_usec=400_000)
    resolv = Path("/etc/netns") / topo.client / "resolv.conf"
    original = resolv.read_text()
    routes_before = topo.ns_run(topo.client, "ip", "route").stdout
    deploy.make_client("c1", kill_switch=True)
    proc = deploy.start_client("c1")
    log = deploy.dir / "c1.log"
    ready = notify.wait("READY", 15, log)
    # Right when READY=1 arrives the tunnel carries traffic.
    assert ping(topo, topo.client, "10.201.0.1")
    assert ready["STATUS"].startswith("connected")
    notify.wait("WATCHDOG", 2, log)
    assert_dropped(proc.pid, CAP_NET_ADMIN | CAP_DAC_OVERRIDE)
    assert "nameserver 10.201.0.1" in resolv.read_text()
    assert "veilgate_ks_" in topo.ns_run(topo.client, "nft", "list", "tables").stdout

    proc.send_signal(signal.SIGHUP)
    notify.wait("READY", 5, log)
    assert ping(topo, topo.client, "10.201.0.1")

    assert deploy.stop_client("c1") == 0
    notify.wait("STOPPING", 2)
    # The dropped client undid everything: DNS, routes, kill switch, state file.
    assert resolv.read_text() == original
    assert topo.ns_run(topo.client, "ip", "route").stdout == routes_before
    assert "veilgate_ks_" not in topo.ns_run(topo.client, "nft", "list", "tables").stdout
    assert list((deploy.dir / "c1-state").iterdir()) == []
    statuses = notify.statuses()
    assert statuses and not any(ADDRESS.search(s) for s in statuses), statuses


def test_provider_ready_drop_and_reload(service_deploy: Deployment, notify: Notifications) -> None:
    deploy, topo = service_deploy, service_deploy.topo
    deploy.user = USER
    deploy.env = notify.env(watchdog_usec=400_000)
    deploy.start_provider()
    proc = deploy.provider_proc
    assert proc is not None
    log = deploy.dir / "provider.log"
    notify.wait("READY", 20, log)

    def gateways() -> list[str]:
        out = topo.ns_run(
            topo.gateway, "curl", "-sk", "--max-time", "5", f"{deploy.provider_url}/v1/provider"
        ).stdout
        document = json.loads(base64.b64decode(json.loads(out)["document"]))
        return [str(g["name"]) for g in document["gateways"]]

    assert gateways() == ["gateway"]
    notify.wait("WATCHDOG", 2, log)
    assert_dropped(proc.pid, 0)

    config = deploy.dir / "provider.toml"
    text = config.read_text()
    extra = text[text.index("[[gateway]]") :].replace('name = "gateway"', 'name = "second"')
    config.write_text(text + "\n" + extra)
    proc.send_signal(signal.SIGHUP)
    notify.wait("RELOADING", 5, log)
    notify.wait("READY", 5, log)
    wait_for(lambda: gateways() == ["gateway", "second"], 5, "the reloaded gateway list", log)

    config.write_text("[provider]\nport = 0\n")
    proc.send_signal(signal.SIGHUP)
    notify.wait("READY", 5, log)
    assert sum("reload refused" in line for line in log.read_text().splitlines()) == 1
    assert gateways() == ["gateway", "second"]
    assert deploy.stop_provider() == 0
    notify.wait("STOPPING", 2)
