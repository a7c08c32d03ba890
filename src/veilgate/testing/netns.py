"""A four-host line in network namespaces: client — router ("ISP") — gateway — internet host.

Used by the end-to-end tests and ``make demo``. Every namespace is named
``vg`` + a role letter + a random suffix, traffic stays between these
namespaces, and everything (namespaces with their veths, processes, the
per-namespace resolv.conf) is removed on exit, also after a failure.

Underlay addresses (inside the namespaces only)::

    client 172.31.1.2  fd00:31:1::2  ── router 172.31.1.1 / 172.31.2.1
    gateway 172.31.2.2 fd00:31:2::2  ── router;  gateway 172.31.3.1 ── internet 172.31.3.2

``add_host`` puts more hosts behind the router, each on its own 172.31.N.0/24 (extra clients on
5-12, the handshake flooder of ``veilgate.testing.flood`` on 20).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from veilgate.netfilter import NftTable, block_udp_rules

CLIENT_V4, CLIENT_V6 = "172.31.1.2", "fd00:31:1::2"
ROUTER_C_V4, ROUTER_C_V6 = "172.31.1.1", "fd00:31:1::1"
ROUTER_G_V4, ROUTER_G_V6 = "172.31.2.1", "fd00:31:2::1"
GATEWAY_V4, GATEWAY_V6 = "172.31.2.2", "fd00:31:2::2"
GATEWAY_I_V4, GATEWAY_I_V6 = "172.31.3.1", "fd00:31:3::1"
INTERNET_V4, INTERNET_V6 = "172.31.3.2", "fd00:31:3::2"
TUNNEL_POOL_V4, TUNNEL_POOL_V6 = "10.201.0.0/16", "fd7a:201::/64"


def _run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _run_input(text: str, *cmd: str, timeout: float = 30) -> None:
    result = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")


@dataclass(frozen=True)
class Host:
    """A host ``Topology.add_host`` added: its namespace and its addresses."""

    ns: str
    v4: str
    v6: str
    sources: tuple[str, ...]
    """Every IPv4 address it holds (``v4`` first)."""


class Topology:
    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or secrets.token_hex(3)
        self.client = f"vgc{self.tag}"
        self.router = f"vgr{self.tag}"
        self.gateway = f"vgg{self.tag}"
        self.internet = f"vgi{self.tag}"
        self.namespaces = [self.client, self.router, self.gateway, self.internet]
        self.procs: list[subprocess.Popen[Any]] = []
        self.udp_blocked = False
        self._nft = NftTable(f"vgblock{self.tag}", netns=self.router)
        self._subnets = {1, 2, 3}

    # ---- context management

    def __enter__(self) -> Topology:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def build(self) -> None:
        for ns in self.namespaces:
            _run("ip", "netns", "add", ns)
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text("# resolv.conf of a veilgate test namespace\n")
            self.ns_run(ns, "ip", "link", "set", "lo", "up")
            self.sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")
            self.sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")
        self._link(self.client, f"vg{self.tag}c0", self.router, f"vg{self.tag}r0")
        self._link(self.router, f"vg{self.tag}r1", self.gateway, f"vg{self.tag}g0")
        self._link(self.gateway, f"vg{self.tag}g1", self.internet, f"vg{self.tag}i0")
        c0, r0, r1, g0, g1, i0 = (f"vg{self.tag}{x}" for x in ("c0", "r0", "r1", "g0", "g1", "i0"))
        self._addr(self.client, c0, CLIENT_V4, 24, CLIENT_V6)
        self._addr(self.router, r0, ROUTER_C_V4, 24, ROUTER_C_V6)
        self._addr(self.router, r1, ROUTER_G_V4, 24, ROUTER_G_V6)
        self._addr(self.gateway, g0, GATEWAY_V4, 24, GATEWAY_V6)
        self._addr(self.gateway, g1, GATEWAY_I_V4, 24, GATEWAY_I_V6)
        self._addr(self.internet, i0, INTERNET_V4, 24, INTERNET_V6)
        for ns in (self.router, self.gateway):
            self.sysctl(ns, "net.ipv4.ip_forward", "1")
            self.sysctl(ns, "net.ipv6.conf.all.forwarding", "1")
        # The client's "ISP" default route; the gateway reaches clients via the router.
        self.ns_run(self.client, "ip", "route", "add", "default", "via", ROUTER_C_V4)
        self.ns_run(self.client, "ip", "-6", "route", "add", "default", "via", ROUTER_C_V6)
        self.ns_run(self.gateway, "ip", "route", "add", "172.31.1.0/24", "via", ROUTER_G_V4)
        self.ns_run(self.gateway, "ip", "-6", "route", "add", "fd00:31:1::/64", "via", ROUTER_G_V6)
        self.ns_run(self.router, "ip", "route", "add", "172.31.3.0/24", "via", GATEWAY_V4)
        self.ns_run(self.router, "ip", "-6", "route", "add", "fd00:31:3::/64", "via", GATEWAY_V6)
        # The internet host knows the tunnel pools are behind the gateway, and nothing of the client's ISP.
        self.ns_run(self.internet, "ip", "route", "add", TUNNEL_POOL_V4, "via", GATEWAY_I_V4)
        self.ns_run(self.internet, "ip", "-6", "route", "add", TUNNEL_POOL_V6, "via", GATEWAY_I_V6)

    def add_client(self, n: int) -> tuple[str, str]:
        """Another client host behind the router, on 172.31.(3+n).0/24; returns (namespace, its address)."""
        if not 2 <= n <= 9:
            raise ValueError("extra clients are numbered 2 to 9")
        host = self.add_host(f"c{n}", 3 + n)
        return host.ns, host.v4

    def add_host(self, role: str, subnet: int, *, addresses: int = 1) -> Host:
        """Another host behind the router ("the ISP"), on 172.31.<subnet>.0/24 and fd00:31:<subnet>::/64.

        It holds ``addresses`` IPv4 addresses from .2 up on its link (more than one for a host that
        sends from many sources, e.g. a flooder) and routes everything via the router; the gateway
        routes the subnet back via the router, so its answers to any of these addresses arrive.
        The namespace is ``vg<role><tag>``, removed with the topology.
        """
        if not (role.isalnum() and role.islower() and 1 <= len(role) <= 6):
            raise ValueError("a host's role is 1 to 6 lowercase letters or digits")
        if not 4 <= subnet <= 254 or subnet in self._subnets:
            raise ValueError(f"subnet {subnet} is taken or not in 4-254")
        if not 1 <= addresses <= 250:
            raise ValueError("a host holds 1 to 250 addresses")
        ns = f"vg{role}{self.tag}"
        if ns in self.namespaces:
            raise ValueError(f"a host with role {role} exists already")
        self._subnets.add(subnet)
        _run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("# resolv.conf of a veilgate test namespace\n")
        self.ns_run(ns, "ip", "link", "set", "lo", "up")
        self.sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")
        self.sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")
        dev_h, dev_r = f"vg{self.tag}{role}", f"vg{self.tag}r{role}"
        self._link(ns, dev_h, self.router, dev_r)
        v4s = tuple(f"172.31.{subnet}.{2 + i}" for i in range(addresses))
        rv4, v6, rv6 = f"172.31.{subnet}.1", f"fd00:31:{subnet}::2", f"fd00:31:{subnet}::1"
        self._addr(ns, dev_h, v4s[0], 24, v6)
        if addresses > 1:
            # One `ip -batch` rather than a command per address.
            _run_input(
                "".join(f"addr add {a}/24 dev {dev_h}\n" for a in v4s[1:]), "ip", "-n", ns, "-batch", "-"
            )
        self._addr(self.router, dev_r, rv4, 24, rv6)
        self.ns_run(ns, "ip", "route", "add", "default", "via", rv4)
        self.ns_run(ns, "ip", "-6", "route", "add", "default", "via", rv6)
        self.ns_run(self.gateway, "ip", "route", "add", f"172.31.{subnet}.0/24", "via", ROUTER_G_V4)
        self.ns_run(self.gateway, "ip", "-6", "route", "add", f"fd00:31:{subnet}::/64", "via", ROUTER_G_V6)
        return Host(ns, v4s[0], v6, v4s)

    def _link(self, ns_a: str, dev_a: str, ns_b: str, dev_b: str) -> None:
        _run("ip", "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b)
        self.ns_run(ns_a, "ip", "link", "set", dev_a, "up")
        self.ns_run(ns_b, "ip", "link", "set", dev_b, "up")

    def _addr(self, ns: str, dev: str, v4: str, plen: int, v6: str) -> None:
        self.ns_run(ns, "ip", "addr", "add", f"{v4}/{plen}", "dev", dev)
        self.ns_run(ns, "ip", "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")

    def sysctl(self, ns: str, key: str, value: str) -> None:
        self.ns_run(ns, "sysctl", "-q", "-w", f"{key}={value}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs.clear()
        for ns in self.namespaces:
            # Anything still running inside (started by a process we started) goes too.
            result = _run("ip", "netns", "pids", ns, check=False)
            for pid in result.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run("ip", "netns", "del", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)

    # ---- running things

    def ns_run(
        self, ns: str, *cmd: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout)

    def serve_web(self, root: Path, name: str, data: bytes) -> None:
        """An HTTP server on the internet host (port 8080, IPv4 and IPv6) serving ``data`` as
        ``/name`` from ``root`` (``/name?rate=N``: paced at N bytes per second,
        ``veilgate.testing.web``); returns once it answers."""
        root.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        self.spawn(
            self.internet,
            sys.executable,
            "-m",
            "veilgate.testing.web",
            "8080",
            str(root),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:8080/{name}"
        deadline = time.monotonic() + 10
        while self.ns_run(self.internet, "curl", "-sf", "-o", "/dev/null", url, check=False).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("the internet host's web server did not start")
            time.sleep(0.1)

    def spawn(self, ns: str, *cmd: str, **kwargs: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 10) -> int:
        """SIGTERM a spawned process and wait for it; returns its exit code."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return int(proc.returncode)

    # ---- the hostile network

    def block_udp(self) -> None:
        self._nft.apply(block_udp_rules())
        self.udp_blocked = True

    def unblock_udp(self) -> None:
        self._nft.delete()
        self.udp_blocked = False
