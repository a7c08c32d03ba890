"""``make demo``: a provider, a gateway and a client in network namespaces, real traffic, live fallback.

Topology (all inside namespaces this demo creates and removes)::

    client ── ISP router (UDP can be blocked here) ── gateway ── internet host

Steps: connect over UDP; ping and download from the internet host; block UDP
at the router and watch the client move to TLS on port 443 with the same
session (the gateway shows web clients a plain HTTPS site there); unblock and
watch it come back to UDP. Exits non-zero if any step fails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from veilgate.testing import Topology, netns
from veilgate.testing.deploy import Deployment

BOLD = "\033[1m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""


class Demo:
    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str]] = []

    def step(self, title: str) -> None:
        print(f"\n{BOLD}== {title}{RESET}", flush=True)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append((name, ok, detail))
        mark = "ok  " if ok else "FAIL"
        print(f"  [{mark}] {name}{'  (' + detail + ')' if detail else ''}", flush=True)
        return ok


def wait_until(predicate: Callable[[], bool], timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (network namespaces, TUN devices, nftables)", file=sys.stderr)
        return 2
    for tool in ("ip", "nft", "ping", "curl"):
        if shutil.which(tool) is None:
            print(f"make demo needs {tool}; run it through `make demo`, which installs it", file=sys.stderr)
            return 2
    demo = Demo()
    work = Path(tempfile.mkdtemp(prefix="veilgate-demo-"))
    try:
        with Topology() as topo:
            run(demo, topo, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = [name for name, ok, _ in demo.results if not ok]
    print(f"\n{BOLD}== summary{RESET}")
    for name, ok, detail in demo.results:
        print(f"  {'ok  ' if ok else 'FAIL'}  {name}{': ' + detail if detail else ''}")
    print(
        "\nall steps passed; everything the demo created is removed"
        if not failed
        else f"\n{len(failed)} step(s) failed"
    )
    return 1 if failed else 0


def run(demo: Demo, topo: Topology, work: Path) -> None:
    demo.step("topology in network namespaces")
    print(f"  client   {topo.client:14s} {netns.CLIENT_V4}")
    print(
        f"  ISP      {topo.router:14s} {netns.ROUTER_C_V4} / {netns.ROUTER_G_V4}  (UDP can be blocked here)"
    )
    print(f"  gateway  {topo.gateway:14s} {netns.GATEWAY_V4}")
    print(f"  internet {topo.internet:14s} {netns.INTERNET_V4}, {netns.INTERNET_V6}")

    deploy = Deployment(topo, work / "vg")
    tls_name, tls_pin = deploy.enable_tls("www.example.org")
    demo.step("provider service: signed provider document, blind credential issuance (RFC 9474)")
    fingerprint = deploy.start_provider(on_internet=True)
    print(f"  provider at {deploy.provider_url}, certificate fingerprint {fingerprint[:16]}...")
    print("  it sits behind the gateway's NAT: credentials fetched ahead through the tunnel reach it")
    print("  from the gateway's address, not from the client's")
    print("  the client is configured with these two values only; it gets the gateway list and a")
    print("  credential for a fresh key from the provider, which signs blind and never sees that key")
    blob = os.urandom(4 * 1024 * 1024)
    digest = hashlib.sha256(blob).hexdigest()
    topo.serve_web(work / "www", "file.bin", blob)

    demo.step("gateway and client start; the client tries UDP first")
    deploy.start_gateway()
    deploy.make_provider_client("c1", reprobe_interval=3.0)
    deploy.start_client("c1")
    try:
        status = deploy.wait_client("c1", timeout=30)
    except TimeoutError as exc:
        demo.check("client connected", False, str(exc).splitlines()[0])
        return
    demo.check(
        "client connected from the provider URL alone",
        True,
        f"gateway {status.get('gateway')}, over {status['transport']}, tunnel address {status['ipv4']}",
    )

    def ping(address: str, count: int = 3) -> bool:
        flag = "-6" if ":" in address else "-4"
        r = topo.ns_run(
            topo.client, "ping", flag, "-c", str(count), "-i", "0.2", "-W", "2", address, check=False
        )
        return r.returncode == 0

    def download(label: str) -> None:
        dest = work / "download.bin"
        t0 = time.monotonic()
        r = topo.ns_run(
            topo.client,
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "60",
            "-o",
            str(dest),
            f"http://{netns.INTERNET_V4}:8080/file.bin",
            check=False,
            timeout=70,
        )
        took = time.monotonic() - t0
        ok = r.returncode == 0 and hashlib.sha256(dest.read_bytes()).hexdigest() == digest
        rate = len(blob) * 8 / took / 1e6
        demo.check(f"4 MB download {label}, checksum verified", ok, f"{took:.2f} s, {rate:.0f} Mbit/s")

    demo.step("traffic through the tunnel over UDP")
    demo.check("ping internet host (IPv4) through the tunnel", ping(netns.INTERNET_V4))
    demo.check("ping internet host (IPv6) through the tunnel", ping(netns.INTERNET_V6))
    download("over UDP")

    demo.step("the hotel Wi-Fi blocks UDP (nftables on the ISP router)")
    pinger = topo.spawn(
        topo.client,
        "ping",
        "-i",
        "0.1",
        "-W",
        "1",
        netns.INTERNET_V4,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(0.5)
    t_block = time.monotonic()
    topo.block_udp()
    print("  UDP blocked; a ping runs every 100 ms meanwhile")
    took = wait_until(lambda: deploy.client_status("c1").get("transport") == "tls", 20)
    demo.check(
        "client moved to TLS (port 443) by itself, same session",
        took is not None,
        f"{took:.2f} s after the block" if took is not None else "not within 20 s",
    )
    flows = wait_until(lambda: ping(netns.INTERNET_V4, count=1), 10)
    if took is not None and flows is not None:
        print(f"  traffic flows again {time.monotonic() - t_block:.2f} s after the block")
    download("over TLS")
    page = topo.ns_run(
        topo.client,
        "curl",
        "-sk",
        "--max-time",
        "5",
        "--resolve",
        f"{tls_name}:443:{netns.GATEWAY_V4}",
        f"https://{tls_name}/",
        check=False,
    )
    demo.check(
        f"a browser at https://{tls_name}/ gets an ordinary web page (the gateway's TLS key pin "
        f"{tls_pin[:16]}... is in the provider document)",
        "<title>Welcome</title>" in page.stdout,
    )

    demo.step("UDP comes back")
    t_unblock = time.monotonic()
    topo.unblock_udp()
    back = wait_until(lambda: deploy.client_status("c1").get("transport") == "udp", 20)
    demo.check(
        "client back on UDP by itself (re-probe every 3 s)",
        back is not None,
        f"{back:.2f} s after UDP returned" if back is not None else "not within 20 s",
    )
    demo.check("ping after returning to UDP", ping(netns.INTERNET_V4))
    topo.stop(pinger)
    out = pinger.stdout.read() if pinger.stdout else ""
    replies = sum(1 for line in out.splitlines() if "bytes from" in line)
    print(f"  the 100 ms ping got {replies} replies over {time.monotonic() - t_block + 0.5:.1f} s")

    demo.step("what the client and gateway report")
    status = deploy.client_status("c1")
    for sw in status["switches"]:
        print(f"  client: {sw['from'] or '-':>4} -> {sw['to']:<4} {sw['why']:<18} took {sw['took']:.2f} s")
    gw = deploy.gateway_status()
    print(
        f"  gateway: {gw['sessions']} session(s), by transport {gw['sessions_by_transport']}, "
        f"rx {gw['rx_bytes']} B, tx {gw['tx_bytes']} B"
    )
    print(f"  data path: client {status['data_path']}, gateway {gw['data_path']}")
    demo.check(
        "one session all along", gw["sessions"] == 1 and gw["counters"].get("sessions-established") == 1
    )
    _ = t_unblock
    deploy.stop_client("c1")
    deploy.stop_gateway()


if __name__ == "__main__":
    sys.exit(main())
