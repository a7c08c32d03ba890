"""docs/operator.md, run: every shell block of the guide, in order, on the host it is marked for.

Hosts are network namespaces of a ``Topology`` (client, gateway, and a provider on the internet
side, behind the gateway's NAT as docs/provider.md asks), each with a mount namespace of its own
(``veilgate.testing.hosts.MountHost``): /etc, /usr, /var/lib, /opt and /root copy-on-write, /run and
/tmp empty, so the guide's literal paths are used and the machine's files are never touched.
``systemctl`` and ``journalctl`` there are ``veilgate.testing.servicemanager``: it runs the unit
files the guide installed (READY=1 awaited, reload awaited); the units it knows nothing about run
from their Debian unit files too (unbound, nftables). A block marked ``<!-- on: build -->`` runs in
this checkout; ``<!-- copy, on: HOST -->`` blocks hold ``scp`` lines, which the test carries out
between the hosts (no SSH here); ``<!-- not run: ... -->`` is allowed only for the ``apt-get``
block, replaced by a check that each package it names is installed (unbound is unpacked by ``make
deps`` and laid over the gateway's /etc and /usr instead, since installing it would start a
resolver on the machine; its maintainer script's one step that matters, the ``unbound`` user and
its folder, is done here).

Only test scaffolding is added to what the guide does: the network (the gateway's default route
toward the internet, forwarding off until the gateway turns it on, no route back to the tunnel
pools on the internet side), /etc/hosts naming the servers, a name server on the internet host
for the zone ``guide.test``, and one unbound snippet forwarding that zone to it. At the end the
guide's promises are checked: the client gets an address, reaches the internet host through the
NAT, resolves a name through the gateway's unbound, the metrics answer, ``veilgate status``
works, ``systemctl reload`` keeps the session, and the gateway comes back after the upgrade.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from veilgate.testing import Topology, netns
from veilgate.testing.desktop import start_dnsmasq
from veilgate.testing.hosts import MountHost, package_root

pytestmark = pytest.mark.e2e


@pytest.fixture
def topo() -> Iterator[Topology]:
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists():
        pytest.skip("needs root and /dev/net/tun (network namespaces, TUN, nftables)")
    for tool in ("ip", "nft", "ping", "curl", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (make deps installs it)")
    with Topology() as t:
        yield t


ROOT = Path(__file__).parents[2]
GUIDE = ROOT / "docs" / "operator.md"
UNBOUND_ROOT = ROOT / ".venv" / "unbound-root"
PROVIDER_V4 = "172.31.30.2"
NAMES = {"provider.example.org": "provider", "gw1.example.org": "gateway", "client.example.org": "client"}
ZONE_NAME, ZONE_ADDRESS = "www.guide.test", netns.INTERNET_V4


@dataclass
class Block:
    section: str
    hosts: list[str]
    kind: str  # "run", "copy" or "not run"
    text: str
    line: int


def guide_blocks(text: str) -> list[Block]:
    """Every ```sh block with the marker before it; a block without one is an error."""
    blocks: list[Block] = []
    section = ""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## "):
            section = line[3:]
        if line.strip() != "```sh":
            continue
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        marker = re.fullmatch(r"<!-- (on|copy, on|not run): (.*) -->", lines[j].strip())
        assert marker, f"docs/operator.md:{i + 1}: a sh block needs <!-- on: HOST --> before it"
        end = lines.index("```", i + 1)
        kind = {"on": "run", "copy, on": "copy", "not run": "not run"}[marker.group(1)]
        hosts = marker.group(2).split() if kind != "not run" else []
        blocks.append(Block(section, hosts, kind, "\n".join(lines[i + 1 : end]) + "\n", i + 2))
    return blocks


@pytest.fixture
def world(topo: Topology, tmp_path: Path) -> Iterator[dict[str, MountHost]]:
    if shutil.which("unshare") is None or not (UNBOUND_ROOT / "usr/sbin/unbound").exists():
        pytest.skip("needs util-linux and unbound unpacked into .venv (make deps)")
    # The provider: a host on the internet side, reached through the gateway's default route.
    prov = f"vgp{topo.tag}"
    subprocess.run(["ip", "netns", "add", prov], check=True)
    topo.namespaces.append(prov)
    topo.ns_run(prov, "ip", "link", "set", "lo", "up")
    dev_p, dev_i = f"vg{topo.tag}p0", f"vg{topo.tag}ip"
    subprocess.run(
        [
            "ip",
            "link",
            "add",
            dev_p,
            "netns",
            prov,
            "type",
            "veth",
            "peer",
            "name",
            dev_i,
            "netns",
            topo.internet,
        ],
        check=True,
    )
    topo.ns_run(prov, "ip", "addr", "add", f"{PROVIDER_V4}/24", "dev", dev_p)
    topo.ns_run(prov, "ip", "link", "set", dev_p, "up")
    topo.ns_run(topo.internet, "ip", "addr", "add", "172.31.30.1/24", "dev", dev_i)
    topo.ns_run(topo.internet, "ip", "link", "set", dev_i, "up")
    topo.ns_run(prov, "ip", "route", "add", "default", "via", "172.31.30.1")
    topo.sysctl(topo.internet, "net.ipv4.ip_forward", "1")
    topo.ns_run(topo.router, "ip", "route", "add", "172.31.30.0/24", "via", netns.GATEWAY_V4)
    # The gateway: forwarding off until it turns it on; its default route toward the internet host,
    # which knows the way back to the clients' own addresses (their first fetch from the provider)
    # and none to the tunnel pools: only NAT brings answers home.
    for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
        topo.sysctl(topo.gateway, key, "0")
    topo.ns_run(topo.gateway, "ip", "route", "add", "default", "via", netns.INTERNET_V4)
    topo.ns_run(topo.gateway, "ip", "-6", "route", "add", "default", "via", netns.INTERNET_V6)
    topo.ns_run(topo.internet, "ip", "route", "del", netns.TUNNEL_POOL_V4)
    topo.ns_run(topo.internet, "ip", "-6", "route", "del", netns.TUNNEL_POOL_V6)
    topo.ns_run(topo.internet, "ip", "route", "add", "172.31.0.0/16", "via", netns.GATEWAY_I_V4)
    start_dnsmasq(topo, topo.internet, netns.INTERNET_V4, {ZONE_NAME: ZONE_ADDRESS}, tmp_path / "dnsmasq.log")

    hosts = {"provider.example.org": PROVIDER_V4, "gw1.example.org": netns.GATEWAY_V4}
    packages = package_root(UNBOUND_ROOT, tmp_path)
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse())}
    made = {
        name: MountHost(
            topo,
            ns,
            name,
            tmp_path,
            hostname=hostname,
            hosts=hosts,
            env=env,
            packages=packages if name == "gateway" else None,
            keep=(ROOT,),
        )
        for name, ns, hostname in (
            ("provider", prov, "provider"),
            ("gateway", topo.gateway, "gw1"),
            ("client", topo.client, "client"),
        )
    }
    try:
        yield made
    finally:
        for name, host in made.items():
            for unit in ("veilgate-client@vpn", "veilgate-gateway@gw1", "veilgate-provider@main", "unbound"):
                host.sh(f"systemctl stop {unit} 2>/dev/null || true", check=False, timeout=30)
            log = host.sh("journalctl", check=False).stdout
            (tmp_path / f"{name}.journal").write_text(log)


def wheelhouse() -> Path:
    """veilgate's dependencies as wheels, for the servers, which have no internet (pip finds them
    through PIP_FIND_LINKS and PIP_NO_INDEX in the environment the guide's commands run in).
    Outside /tmp, which the hosts do not share."""
    where = ROOT / "build" / "guide-wheelhouse"
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--dest",
            str(where),
            *dependencies,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return where


def check_packages(block: Block) -> None:
    """The apt-get block: each package is installed on this machine, or unpacked (unbound)."""
    [install] = [line for line in block.text.splitlines() if line.startswith("apt-get install")]
    packages = [w for w in shlex.split(install)[2:] if not w.startswith("-")]
    assert packages
    for package in packages:
        if package == "unbound":
            assert (UNBOUND_ROOT / "usr/sbin/unbound").exists()
            continue
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
        ).stdout
        assert status == "install ok installed", f"{package} is not installed (make deps)"


def host_of(address: str) -> tuple[str, str]:
    """``root@gw1.example.org:/path`` -> ("gateway", "/path")."""
    where, path = address.split(":", 1)
    return NAMES[where.split("@")[-1]], path


def copy(block: Block, hosts: dict[str, MountHost]) -> None:
    """scp lines: read each source on its host, write it on the destination's."""
    [here] = block.hosts
    for line in block.text.splitlines():
        words = shlex.split(line)
        assert words[0] == "scp" and len(words) >= 3, line
        *sources, target = words[1:]
        to_host, to_path = host_of(target) if ":" in target else (here, target)
        for source in sources:
            from_host, from_path = host_of(source) if ":" in source else (here, source)
            if from_host == "build":
                files = {p.name: p.read_bytes() for p in ROOT.glob(from_path)}
            else:
                listing = hosts[from_host].sh(f"ls -d {from_path}").stdout.split()
                files = {
                    Path(p).name: base64.b64decode(hosts[from_host].sh(f"base64 -w0 {p}").stdout)
                    for p in listing
                }
            assert files, f"{line}: nothing matches {from_path}"
            for name, data in files.items():
                dest = f"{to_path.rstrip('/')}/{name}" if to_path.endswith("/") else to_path
                hosts[to_host].sh(f"base64 -d > {dest}", input=base64.b64encode(data).decode())


def gateway_figures(gateway: MountHost) -> dict[str, object]:
    figures: dict[str, object] = json.loads(gateway.sh("veilgate status gateway --json").stdout)
    return figures


def test_the_operator_guide_runs_as_written(world: dict[str, MountHost], topo: Topology) -> None:
    hosts = world
    gateway, client = hosts["gateway"], hosts["client"]
    blocks = guide_blocks(GUIDE.read_text())
    assert [b for b in blocks if b.kind == "not run"] == [b for b in blocks if "apt-get" in b.text]
    # What installing the Debian package would have done on the gateway: its maintainer script makes
    # the user and its folder, and its first start (by the package) the root trust anchor file.
    gateway.sh(
        "useradd --system --user-group --no-create-home --home-dir /var/lib/unbound"
        " --shell /usr/sbin/nologin unbound\nmkdir -p /var/lib/unbound\n"
        "chown unbound:unbound /var/lib/unbound\n/usr/libexec/unbound-helper root_trust_anchor_update"
    )
    before_reload: dict[str, object] = {}
    started = time.monotonic()
    for block in blocks:
        if block.section.startswith("11.") and not before_reload:
            before_reload = check_serving(hosts, topo)
        if block.section.startswith("12.") and "reloaded" not in before_reload:
            check_reload_kept_the_session(hosts, topo, before_reload)
            before_reload["reloaded"] = True
        if block.kind == "not run":
            check_packages(block)
        elif block.kind == "copy":
            copy(block, hosts)
        elif block.hosts == ["build"]:
            result = subprocess.run(
                ["bash", "-e", "-c", block.text], cwd=ROOT, capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, f"docs/operator.md:{block.line}:\n{result.stderr}"
        else:
            if "unbound" in block.text and block.hosts == ["gateway"]:
                # The test's name, answered by unbound itself; anything else it would ask goes to the
                # internet host (which refuses it), never toward the root servers.
                gateway.write(
                    "/etc/unbound/unbound.conf.d/zz-test-zone.conf",
                    f'server:\n    local-data: "{ZONE_NAME}. A {ZONE_ADDRESS}"\n    use-syslog: no\n'
                    f'forward-zone:\n    name: "."\n    forward-addr: {netns.INTERNET_V4}\n',
                )
            run_everywhere(block, hosts)
            if "enable --now veilgate-client@vpn" in block.text:
                # The guide: enable --now returns once the tunnel has its address and routes.
                status = json.loads(client.sh("veilgate status client --json").stdout)
                assert status["connected"] and status["ipv4"], status
    assert "reloaded" in before_reload
    # The upgrade restarted the gateway: it serves again.
    assert gateway.sh("systemctl is-active veilgate-gateway@gw1").stdout.strip() == "active"
    journal = gateway.sh("journalctl -u veilgate-gateway@gw1 -p warning").stdout
    assert journal.strip() == "-- No entries --", journal
    assert time.monotonic() - started < 120


def run_everywhere(block: Block, hosts: dict[str, MountHost]) -> None:
    """One block on each host it names, at the same time when it names several."""
    procs = []
    for name in block.hosts:
        host = hosts[name]
        procs.append((name, host.start(block.text)))
    for name, proc in procs:
        out, err = proc.communicate(timeout=180)
        if proc.returncode != 0:
            journal = hosts[name].sh("journalctl -n 40", check=False).stdout
            pytest.fail(
                f"docs/operator.md:{block.line}, on {name}: exit {proc.returncode}\n--- stdout ---\n{out}"
                f"\n--- stderr ---\n{err}\n--- its journal ---\n{journal}"
            )


def check_serving(hosts: dict[str, MountHost], topo: Topology) -> dict[str, object]:
    gateway, client = hosts["gateway"], hosts["client"]
    status = json.loads(client.sh("veilgate status client --json").stdout)
    assert status["connected"] and status["ipv4"].startswith("10.201."), status
    ping = f"ping -c 3 -i 0.2 -W 2 {netns.INTERNET_V4}"
    assert client.sh(ping, check=False).returncode == 0, "no ping through the tunnel"
    # The internet host saw the gateway's address (NAT), never the tunnel address.
    resolved = client.sh(f"getent hosts {ZONE_NAME}", check=False)
    assert resolved.stdout.split()[:1] == [ZONE_ADDRESS], (
        client.read("/etc/resolv.conf") + gateway.sh("journalctl -u unbound", check=False).stdout
    )
    assert "nameserver 10.201.0.1" in client.read("/etc/resolv.conf")
    metrics = gateway.sh("curl -sf http://127.0.0.1:9586/metrics").stdout
    assert 'veilgate_gateway_sessions{transport="udp"} 1.0' in metrics, metrics
    provider_metrics = hosts["provider"].sh("curl -sf http://127.0.0.1:9588/metrics").stdout
    # Every metric the guide names is served (a labelled counter with no sample yet has its TYPE line).
    served = set(re.findall(r"^(?:# TYPE )?(veilgate_\w+)", metrics + provider_metrics, re.M))
    for metric in set(re.findall(r"\bveilgate_(?:gateway|provider)_\w+", GUIDE.read_text())):
        assert {metric, metric.removesuffix("_total")} & served, (
            f"docs/operator.md names {metric}, not served:\n{provider_metrics}"
        )
    figures = {"gateway": gateway_figures(gateway), "client": status}
    # TCP 443 is an ordinary web site to a browser, and the VPN over TLS to a client whose UDP is blocked.
    page = client.sh("curl -sk --max-time 5 https://gw1.example.org/").stdout
    assert "<title>Welcome</title>" in page and "veilgate" not in page.lower(), page
    topo.block_udp()
    try:
        deadline = time.monotonic() + 20
        while json.loads(client.sh("veilgate status client --json").stdout)["transport"] != "tls":
            assert time.monotonic() < deadline, "the client did not move to TLS when UDP was blocked"
            time.sleep(0.2)
        assert client.sh(ping, check=False).returncode == 0, "no ping through the tunnel over TLS"
    finally:
        topo.unblock_udp()
    return figures


def check_reload_kept_the_session(
    hosts: dict[str, MountHost], topo: Topology, before: dict[str, object]
) -> None:
    gateway, client = hosts["gateway"], hosts["client"]
    after = gateway_figures(gateway)
    status = json.loads(client.sh("veilgate status client --json").stdout)
    old = before["gateway"]
    assert isinstance(old, dict) and isinstance(after["totals"], dict)
    assert after["totals"]["sessions_opened"] == old["totals"]["sessions_opened"] == 1, (old, after)
    assert after["sessions"] == 1
    assert status["ipv4"] == before["client"]["ipv4"]  # type: ignore[index]
    assert client.sh(f"ping -c 2 -i 0.2 -W 2 {netns.INTERNET_V4}", check=False).returncode == 0
