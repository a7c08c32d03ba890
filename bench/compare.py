"""Side-by-side benchmark: veilgate against wireguard-go and OpenVPN, as users send traffic.

Three namespaces in a line: the client ``vgbA…`` — veth — the gateway ``vgbB…`` — veth — an
"internet" host ``vgbC…`` running the iperf3 server. The gateway namespace forwards and
masquerades everything leaving toward the internet host (one nftables rule, the same for every
contender, as a provider's gateway NATs its clients). Each contender builds its tunnel between
A and B; A routes the internet host's subnet into the tunnel. The ceiling is the same path
without a tunnel (A routes via B's underlay address, through the same NAT).

Per contender and round: ping RTT to the internet host through the tunnel (20 ms and 1 ms
intervals), iperf3 TCP upload (A to C) and download (``-R``, C to A) with 1 and 4 streams, and
the CPU time of the VPN processes during the 1-stream upload. Medians over ``--rounds`` (5)
rounds with min–max; each run's raw output (iperf3 JSON, ping output, command lines, openssl
speed) is kept under bench/results/<run-id>/ next to the table it produced (``bench.txt``).
Then bench/load.py runs the many-client scenarios against a gateway daemon (``--no-load`` skips).

Prints the table and, last, ``ratio_udp_vs_wireguard_go=X`` and ``ratio_tcp_vs_openvpn_tcp=Y``:
the mean of the upload and download ratios of the 1-stream medians, after per-direction lines.
Writes the table into docs/performance.md (``--no-write`` leaves it alone). Run as root:
``make bench`` (installs the peers from Debian). Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
UA, UB = "172.30.9.1", "172.30.9.2"  # underlay, inside the benchmark's namespaces only
BC, NET = "172.30.10.1", "172.30.10.2"  # the gateway's side toward the internet host, the host
NET_SUBNET = "172.30.10.0/24"
CEILING = "bare-path"
CONTENDERS = (
    "veilgate-udp",
    "veilgate-udp-nooffload",  # the same with udp_offload = false: what GSO/GRO are worth
    "veilgate-udp-python",  # the same on the pure-Python data path: what the compiled one is worth
    "veilgate-tcp",
    "veilgate-tls",
    "wireguard-go",
    "openvpn-udp",
    "openvpn-tcp",
)
EXTRA = ("veilgate-udp-notunoffload",)
"""Contenders ``--only`` accepts that a full run leaves out: veilgate-udp with ``tun_offload = false``
on both ends (one TUN write per packet), what the TUN offload is worth."""
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
TESTS = (("up", 1), ("up", 4), ("down", 1), ("down", 4))


def sh(*cmd: str, check: bool = True, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()[-400:]}")
    return result


class Tunnel(NamedTuple):
    """A contender once up: its device in namespace A, its processes, how it was run."""

    device: str
    pids: list[int]
    """The client end's process first, then the gateway end's."""
    how: str


@dataclass
class Bench:
    work: Path
    raw: Path
    """The run's folder under bench/results: raw output kept with the table."""
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    commands: dict[str, list[str]] = field(default_factory=dict)
    iperf_server: subprocess.Popen[Any] | None = None

    @property
    def a(self) -> str:
        return f"vgbA{self.tag}"

    @property
    def b(self) -> str:
        return f"vgbB{self.tag}"

    @property
    def c(self) -> str:
        return f"vgbC{self.tag}"

    def ns(
        self, ns: str, *cmd: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout)

    def spawn(
        self, ns: str, *cmd: str, log: str, env: dict[str, str] | None = None, who: str = ""
    ) -> subprocess.Popen[Any]:
        out = (self.work / log).open("a")
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd], stdout=out, stderr=subprocess.STDOUT, env=env
        )
        if who:
            self.commands.setdefault(who, []).append(shlex.join(cmd))
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def up(self) -> None:
        for n in (self.a, self.b, self.c):
            sh("ip", "netns", "add", n)
            self.ns(n, "ip", "link", "set", "lo", "up")
        va, vb = f"vgb{self.tag}a", f"vgb{self.tag}b"
        vc, vd = f"vgb{self.tag}c", f"vgb{self.tag}d"
        sh("ip", "link", "add", va, "netns", self.a, "type", "veth", "peer", "name", vb, "netns", self.b)
        sh("ip", "link", "add", vc, "netns", self.b, "type", "veth", "peer", "name", vd, "netns", self.c)
        for ns, dev, addr in ((self.a, va, UA), (self.b, vb, UB), (self.b, vc, BC), (self.c, vd, NET)):
            self.ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", dev)
            self.ns(ns, "ip", "link", "set", dev, "up")
        # The gateway forwards and NATs toward the internet, for every contender alike.
        self.ns(self.b, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        rules = (
            f"table ip vgbench{self.tag} {{\n chain post {{\n  type nat hook postrouting priority 100;\n"
            f'  oifname "{vc}" masquerade\n }}\n}}\n'
        )
        (self.work / "nat.nft").write_text(rules)
        self.ns(self.b, "nft", "-f", str(self.work / "nat.nft"))
        (self.raw / "nat.nft").write_text(rules)
        self.ns(self.a, "ping", "-c", "1", "-W", "2", UB)
        self.start_iperf_server()

    def start_iperf_server(self) -> None:
        """(Re)start the iperf3 server on the internet host: a server whose client vanished
        mid-test stays "busy" for good, which would spoil every test after it."""
        if self.iperf_server is not None:
            self.stop(self.iperf_server)
        self.iperf_server = self.spawn(self.c, "iperf3", "-s", log="iperf-server.log")
        time.sleep(0.5)

    def route_internet(self, device: str | None) -> None:
        """Namespace A reaches the internet host through ``device`` (None: the bare path via B)."""
        via = ["dev", device] if device else ["via", UB]
        self.ns(self.a, "ip", "route", "replace", NET_SUBNET, *via)

    def down(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)
        for n in (self.a, self.b, self.c):
            sh("ip", "netns", "del", n, check=False)


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of the processes and their live children (a veilgate gateway's workers)."""
    total = 0
    pending = list(pids)
    while pending:
        pid = pending.pop()
        with contextlib.suppress(OSError):
            pending += map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def iperf(b: Bench, direction: str, streams: int, duration: int, keep: Path) -> float:
    """Mbit/s received; the JSON is kept in ``keep``. A test refused because the server still
    winds down the previous one (slow through a bloated tunnel) is tried again, up to three times."""
    error = ""
    for _ in range(3):
        cmd = ["iperf3", "-c", NET, "-t", str(duration), "-P", str(streams), "-J"]
        if direction == "down":
            cmd.append("-R")
        r = b.ns(b.a, *cmd, check=False, timeout=duration + 60)
        keep.write_text(r.stdout or json.dumps({"error": r.stderr.strip()[-400:]}))
        try:
            result = json.loads(r.stdout)
        except ValueError:
            result = {"error": r.stderr.strip()[-200:] or "no output"}
        try:
            return float(result["end"]["sum_received"]["bits_per_second"]) / 1e6
        except (KeyError, TypeError, ValueError):
            error = str(result.get("error", "no result")) if isinstance(result, dict) else "no result"
        if "busy" in error:
            b.start_iperf_server()
        time.sleep(2)
    print(f"  iperf3 {direction} -P {streams} failed: {error}", file=sys.stderr)
    return float("nan")


def ping_ms(b: Bench, keep: Path, interval: float = 0.02, count: int = 50) -> float:
    """Mean RTT to the internet host; ping's output is kept in ``keep``. At the default 20 ms
    interval the processes sleep between packets, so each packet meets cold caches; at 1 ms
    they stay busy (docs/performance.md, "Why an idle gap costs more than the cipher")."""
    r = b.ns(b.a, "ping", "-q", "-c", str(count), "-i", str(interval), NET, check=False, timeout=60)
    keep.write_text(r.stdout + r.stderr)
    for line in r.stdout.splitlines():
        if line.startswith("rtt"):
            return float(line.split("=")[1].split("/")[1])
    return float("nan")


# ---------------------------------------------------------------- contenders


@contextlib.contextmanager
def veilgate(
    b: Bench, transport: str, offload: bool = True, compiled: bool = True, tun_offload: bool = True
) -> Iterator[Tunnel]:
    from veilgate import fastpath
    from veilgate.config.keys import encode_key, write_key_file
    from veilgate.credentials import IssuerKey, issue
    from veilgate.protocol.crypto import KeyPair

    d = b.work / (
        f"veilgate-{transport}{'' if offload else '-nooffload'}{'' if compiled else '-python'}"
        f"{'' if tun_offload else '-notunoffload'}"
    )
    d.mkdir(exist_ok=True)
    knob = ("" if offload else "udp_offload = false\n") + ("" if tun_offload else "tun_offload = false\n")
    gw_tls = cl_tls = ""
    if transport == "tls":
        from veilgate.transport.tls import make_certificate, pem_pin

        cert, key = make_certificate("www.example.org")
        (d / "tls.crt").write_bytes(cert)
        (d / "tls.key").write_bytes(key)
        gw_tls = 'tls_cert_file = "tls.crt"\ntls_key_file = "tls.key"\ntls_name = "www.example.org"\n'
        cl_tls = f'tls_name = "www.example.org"\ntls_pin = "{pem_pin(cert)}"\n'
    issuer, gw, cl = IssuerKey.generate(), KeyPair.generate(), KeyPair.generate()
    write_key_file(d / "gw.key", gw.private_bytes())
    write_key_file(d / "cl.key", cl.private_bytes())
    (d / "cl.cred").write_text(encode_key(issue(issuer, cl.public, time.time()).encode()) + "\n")
    (d / "gw.toml").write_text(
        f'[gateway]\nprivate_key_file = "gw.key"\nlisten = "{UB}"\nlisten6 = ""\nudp_port = 51820\n'
        f'tcp_port = 8443\ntun_name = "vgbt{b.tag}"\nstatus_socket = "gw.sock"\nroutes = ["{NET_SUBNET}"]\nnat = false\nuser = "root"\n{knob}{gw_tls}'
        f'[credentials]\nissuer_public_keys = ["{encode_key(issuer.public_key().to_bytes())}"]\n'
    )
    (d / "cl.toml").write_text(
        f'[client]\ngateway_host = "{UB}"\ngateway_public_key = "{encode_key(gw.public)}"\n'
        f'private_key_file = "cl.key"\ncredential_file = "cl.cred"\nudp_port = 51820\ntcp_port = 8443\n'
        f'transport = "{transport}"\ntun_name = "vgbc{b.tag}"\nstate_dir = "state"\nstatus_socket = "cl.sock"\n'
        f'apply_dns = false\nuser = "root"\n{knob}{cl_tls}'
    )
    py = sys.executable
    env = dict(os.environ, **{fastpath.ENV: "1" if compiled else "0"})
    gproc = b.spawn(
        b.b,
        py,
        "-m",
        "veilgate",
        "gateway",
        "--config",
        str(d / "gw.toml"),
        log=f"vg-{transport}-gw.log",
        env=env,
        who=d.name,
    )
    _wait((d / "gw.sock").exists, 15)
    cproc = b.spawn(
        b.a,
        py,
        "-m",
        "veilgate",
        "connect",
        "--config",
        str(d / "cl.toml"),
        log=f"vg-{transport}-cl.log",
        env=env,
        who=d.name,
    )
    _wait(lambda: b.ns(b.a, "ping", "-c", "1", "-W", "1", "10.201.0.1", check=False).returncode == 0, 20)
    how = f"transport = {transport}, defaults otherwise" + ("" if offload else "; udp_offload = false")
    how += "" if tun_offload else "; tun_offload = false"
    how += f"; {fastpath.ENV}={'1' if compiled else '0'}"
    try:
        yield Tunnel(f"vgbc{b.tag}", [cproc.pid, gproc.pid], how)
    finally:
        b.stop(cproc)
        b.stop(gproc)


@contextlib.contextmanager
def wireguard_go(b: Bench) -> Iterator[Tunnel]:
    wa, wb = f"vgbwa{b.tag}", f"vgbwb{b.tag}"
    keys = {}
    for n in ("a", "b"):
        priv = sh("wg", "genkey").stdout.strip()
        pub = sh("wg", "pubkey", input=priv).stdout.strip()
        (b.work / f"wg{n}.key").write_text(priv + "\n")
        keys[n] = pub
    env = dict(os.environ, WG_PROCESS_FOREGROUND="1")
    pa = b.spawn(b.a, "wireguard-go", "-f", wa, log="wg-a.log", env=env, who="wireguard-go")
    pb = b.spawn(b.b, "wireguard-go", "-f", wb, log="wg-b.log", env=env, who="wireguard-go")
    _wait(
        lambda: (
            Path(f"/var/run/wireguard/{wa}.sock").exists() and Path(f"/var/run/wireguard/{wb}.sock").exists()
        ),
        10,
    )
    b.ns(
        b.a,
        "wg",
        "set",
        wa,
        "listen-port",
        "51820",
        "private-key",
        str(b.work / "wga.key"),
        "peer",
        keys["b"],
        "endpoint",
        f"{UB}:51820",
        "allowed-ips",
        f"10.100.0.2/32,{NET_SUBNET}",
    )
    b.ns(
        b.b,
        "wg",
        "set",
        wb,
        "listen-port",
        "51820",
        "private-key",
        str(b.work / "wgb.key"),
        "peer",
        keys["a"],
        "endpoint",
        f"{UA}:51820",
        "allowed-ips",
        "10.100.0.1/32",
    )
    b.ns(b.a, "ip", "addr", "add", "10.100.0.1/24", "dev", wa)
    b.ns(b.b, "ip", "addr", "add", "10.100.0.2/24", "dev", wb)
    b.ns(b.a, "ip", "link", "set", wa, "mtu", "1420", "up")
    b.ns(b.b, "ip", "link", "set", wb, "mtu", "1420", "up")
    _wait(lambda: b.ns(b.a, "ping", "-c", "1", "-W", "1", "10.100.0.2", check=False).returncode == 0, 10)
    try:
        yield Tunnel(
            wa, [pa.pid, pb.pid], "wireguard-go -f, MTU 1420 on both ends (its default), nothing else to tune"
        )
    finally:
        b.stop(pa)
        b.stop(pb)
        for n in (wa, wb):
            Path(f"/var/run/wireguard/{n}.sock").unlink(missing_ok=True)


def _pki(d: Path) -> None:
    if (d / "client.crt").exists():
        return
    d.mkdir(exist_ok=True)

    def run(*c: str) -> None:
        sh(*c, cwd=str(d))

    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    run(
        "openssl",
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-sha256",
        "-days",
        "2",
        "-subj",
        "/CN=vg-bench-ca",
        "-out",
        "ca.crt",
    )
    for n, eku in (("server", "serverAuth"), ("client", "clientAuth")):
        run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{n}.key")
        run("openssl", "req", "-new", "-key", f"{n}.key", "-subj", f"/CN=vg-{n}", "-out", f"{n}.csr")
        (d / f"{n}.ext").write_text(
            f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyAgreement\nextendedKeyUsage={eku}\n"
        )
        run(
            "openssl",
            "x509",
            "-req",
            "-in",
            f"{n}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-sha256",
            "-extfile",
            f"{n}.ext",
            "-out",
            f"{n}.crt",
        )


def openvpn_tuning(proto: str, cipher: str) -> list[str]:
    """What an operator tuning OpenVPN 2.6 for throughput sets (no DCO: see docs/performance.md)."""
    opts = [
        "--data-ciphers",
        cipher,
        "--sndbuf",
        "0",  # 0: the kernel's default and, for TCP, its autotuning
        "--rcvbuf",
        "0",
        "--txqueuelen",
        "1000",
    ]
    return opts + (["--fast-io"] if proto == "udp" else ["--tcp-nodelay"])


def fastest_cipher(keep: Path) -> str:
    """AES-256-GCM or CHACHA20-POLY1305, whichever OpenSSL seals 1420-byte buffers faster here."""
    speeds: dict[str, float] = {}
    lines = []
    for cipher in ("AES-256-GCM", "CHACHA20-POLY1305"):
        r = sh("openssl", "speed", "-seconds", "1", "-bytes", "1420", "-evp", cipher.lower(), check=False)
        last = (r.stdout.strip().splitlines() or ["?"])[-1]
        lines.append(f"$ openssl speed -seconds 1 -bytes 1420 -evp {cipher.lower()}\n{last}")
        with contextlib.suppress(ValueError, IndexError):
            speeds[cipher] = float(last.split()[-1].rstrip("k"))
    best = max(speeds, key=lambda c: speeds[c]) if speeds else "AES-256-GCM"
    keep.write_text("\n".join(lines) + f"\nchosen for OpenVPN: {best}\n")
    return best


@contextlib.contextmanager
def openvpn(b: Bench, proto: str, cipher: str) -> Iterator[Tunnel]:
    d = b.work / "pki"
    _pki(d)
    common = ["--dev-type", "tun", "--disable-dco", "--ca", str(d / "ca.crt"), "--verb", "3", "--ping", "10"]
    common += openvpn_tuning(proto, cipher)
    sp = ["--proto", "udp"] if proto == "udp" else ["--proto", "tcp-server"]
    cp = ["--proto", "udp", "--nobind"] if proto == "udp" else ["--proto", "tcp-client"]
    who = f"openvpn-{proto}"
    pb = b.spawn(
        b.b,
        "openvpn",
        *common,
        *sp,
        "--dev",
        f"vgbob{b.tag}",
        "--local",
        UB,
        "--lport",
        "1194",
        "--ifconfig",
        "10.101.0.2",
        "10.101.0.1",
        "--tls-server",
        "--dh",
        "none",
        "--cert",
        str(d / "server.crt"),
        "--key",
        str(d / "server.key"),
        log=f"ovpn-{proto}-b.log",
        who=who,
    )
    time.sleep(0.3)
    pa = b.spawn(
        b.a,
        "openvpn",
        *common,
        *cp,
        "--dev",
        f"vgboa{b.tag}",
        "--remote",
        UB,
        "1194",
        "--ifconfig",
        "10.101.0.1",
        "10.101.0.2",
        "--tls-client",
        "--remote-cert-tls",
        "server",
        "--cert",
        str(d / "client.crt"),
        "--key",
        str(d / "client.key"),
        log=f"ovpn-{proto}-a.log",
        who=who,
    )
    _wait(lambda: b.ns(b.a, "ping", "-c", "1", "-W", "1", "10.101.0.2", check=False).returncode == 0, 30)
    try:
        yield Tunnel(
            f"vgboa{b.tag}", [pa.pid, pb.pid], " ".join(["--disable-dco", *openvpn_tuning(proto, cipher)])
        )
    finally:
        b.stop(pa)
        b.stop(pb)


def _wait(pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise TimeoutError("setup did not come up")


def contender(b: Bench, name: str, cipher: str) -> contextlib.AbstractContextManager[Tunnel]:
    if name == "veilgate-udp":
        return veilgate(b, "udp")
    if name == "veilgate-udp-nooffload":
        return veilgate(b, "udp", offload=False)
    if name == "veilgate-udp-notunoffload":
        return veilgate(b, "udp", tun_offload=False)
    if name == "veilgate-udp-python":
        return veilgate(b, "udp", compiled=False)
    if name == "veilgate-tcp":
        return veilgate(b, "tcp")
    if name == "veilgate-tls":
        return veilgate(b, "tls")
    if name == "wireguard-go":
        return wireguard_go(b)
    return openvpn(b, name.split("-")[1], cipher)


@contextlib.contextmanager
def bare_path(b: Bench) -> Iterator[Tunnel]:
    """The ceiling: no tunnel, A to C routed through B's forwarding and NAT."""
    yield Tunnel("", [], "no tunnel: routed via the gateway namespace, same NAT")


# ---------------------------------------------------------------- main


def write_between_markers(doc: Path, generated: str) -> None:
    """Replace only the generated block of docs/performance.md; the prose around it is kept."""
    text = doc.read_text() if doc.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(f"{head}{BEGIN}\n{generated.rstrip()}\n{END}{tail}")


def versions() -> dict[str, str]:
    def first(*cmd: str) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    import cryptography

    return {
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "wireguard-go": first("wireguard-go", "--version"),
        "openvpn": " ".join(first("openvpn", "--version").split()[:2]),
        "iperf3": first("iperf3", "--version"),
    }


def commit() -> str:
    r = sh("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD", check=False)
    return r.stdout.strip() or "nogit"


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def spread(xs: list[float], fmt: str = "{:.0f}") -> str:
    """Median (min–max) over the rounds."""
    ys = [x for x in xs if x == x]
    if not ys:
        return "n/a"
    if len(ys) == 1:
        return fmt.format(ys[0])
    return f"{fmt.format(statistics.median(ys))} ({fmt.format(min(ys))}–{fmt.format(max(ys))})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8, help="seconds per iperf3 test")
    ap.add_argument("--only", default=",".join(CONTENDERS))
    ap.add_argument("--no-load", action="store_true", help="skip the many-client scenarios (bench/load.py)")
    ap.add_argument("--load-args", default="", help="extra arguments for bench/load.py, e.g. '--storm 50'")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/performance.md")
    ap.add_argument(
        "--results", type=Path, default=ROOT / "bench" / "results", help="where the raw output is kept"
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("ip", "nft", "iperf3", "ping", "wg", "wireguard-go", "openvpn", "openssl", "taskset"):
        if shutil.which(tool) is None:
            print(f"missing {tool}: run `make bench`, which installs the peers", file=sys.stderr)
            return 2
    names = [n for n in args.only.split(",") if n in CONTENDERS + EXTRA]
    started = datetime.datetime.now(datetime.UTC)
    run_id = f"{started:%Y-%m-%d-%H%M}-{commit()}"
    raw = args.results / run_id
    raw.mkdir(parents=True, exist_ok=True)
    out: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    v = versions()
    say(
        f"# make bench (bench/compare.py --only {','.join(names)} --rounds {args.rounds} "
        f"--duration {args.duration}), {started:%Y-%m-%d %H:%M} UTC, commit {commit()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    say("# machine: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    cipher = fastest_cipher(raw / "openssl-speed.txt")
    say(f"# OpenVPN data cipher: {cipher} (the faster one in openssl-speed.txt)")
    rows = [CEILING, *names]
    keys = ("up1", "up4", "down1", "down4", "ping", "ping_busy", "cpu")
    ends = ("up-client", "up-gateway", "down-client", "down-gateway")
    per_gb: dict[str, dict[str, list[float]]] = {n: {k: [] for k in ends} for n in rows}
    """CPU seconds per GB delivered of each end's VPN process in the 1-stream tests: robust where
    the machine is shared, as throughput is not."""
    results: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in rows}
    how: dict[str, str] = {}
    timings: dict[str, list[float]] = {n: [] for n in rows}
    work = Path(tempfile.mkdtemp(prefix="vgbench-"))
    bench = Bench(work, raw)
    t_start = time.monotonic()
    try:
        bench.up()
        for rnd in range(1, args.rounds + 1):
            for name in rows:
                t0 = time.monotonic()
                r = results[name]
                try:
                    with bare_path(bench) if name == CEILING else contender(bench, name, cipher) as tun:
                        how[name] = tun.how
                        bench.route_internet(tun.device or None)
                        time.sleep(1)
                        base = raw / f"{name}-r{rnd}"
                        r["ping"].append(ping_ms(bench, Path(f"{base}-ping-20ms.txt")))
                        r["ping_busy"].append(ping_ms(bench, Path(f"{base}-ping-1ms.txt"), 0.001, 200))
                        for direction, streams in TESTS:
                            keep = Path(f"{base}-{direction}-P{streams}.json")
                            c0, w0 = cpu_seconds(tun.pids), time.monotonic()
                            e0 = [cpu_seconds([pid]) for pid in tun.pids]
                            mbps = iperf(bench, direction, streams, args.duration, keep)
                            r[f"{direction}{streams}"].append(mbps)
                            if (direction, streams) == ("up", 1) and tun.pids:
                                r["cpu"].append(100 * (cpu_seconds(tun.pids) - c0) / (time.monotonic() - w0))
                            if streams == 1 and len(tun.pids) == 2 and mbps > 0:
                                gb = mbps * args.duration / 8e3
                                for end, pid, before in zip(("client", "gateway"), tun.pids, e0, strict=True):
                                    per_gb[name][f"{direction}-{end}"].append(
                                        (cpu_seconds([pid]) - before) / gb
                                    )
                except (TimeoutError, RuntimeError) as exc:
                    print(f"  {name}: setup failed: {exc}", file=sys.stderr)
                timings[name].append(time.monotonic() - t0)

                def last(k: str, r: dict[str, list[float]] = r) -> float:
                    return r[k][-1] if r[k] else float("nan")

                say(
                    f"round {rnd} {name:22s} up {last('up1'):5.0f} / {last('up4'):5.0f}"
                    f"  down {last('down1'):5.0f} / {last('down4'):5.0f} Mbit/s (1 / 4 streams)"
                    f"  ping {last('ping'):.3f} ms (1 ms interval {last('ping_busy'):.3f})"
                    f"  [{timings[name][-1]:.0f} s]"
                )
    finally:
        bench.down()
        shutil.rmtree(work, ignore_errors=True)
    throughput_s = time.monotonic() - t_start
    (raw / "commands.txt").write_text(
        "".join(
            f"## {who}\n" + "\n".join(dict.fromkeys(cmds)) + "\n\n" for who, cmds in bench.commands.items()
        )
    )

    ceiling = results[CEILING]
    table = [
        "| contender | upload, 1 stream | upload, 4 streams | download, 1 stream | download, 4 streams "
        "| share of the bare path, 1 stream up / down | ping RTT ms | ping RTT ms, 1 ms interval "
        "| VPN CPU % of a core (upload) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in rows:
        r = results[name]
        share = (
            "100 % / 100 %"
            if name == CEILING
            else f"{100 * med(r['up1']) / med(ceiling['up1']):.0f} % / {100 * med(r['down1']) / med(ceiling['down1']):.0f} %"
        )
        table.append(
            f"| {name} | {spread(r['up1'])} | {spread(r['up4'])} | {spread(r['down1'])} | {spread(r['down4'])} "
            f"| {share} | {spread(r['ping'], '{:.3f}')} | {spread(r['ping_busy'], '{:.3f}')} "
            f"| {spread(r['cpu']) if r['cpu'] else '–'} |"
        )
    how_block = "\n".join(f"- **{n}**: {how.get(n, 'did not come up')}" for n in rows)

    def ratio(a: str, b: str, k: str) -> float:
        return med(results.get(a, {}).get(k, [])) / (med(results.get(b, {}).get(k, [])) or float("nan"))

    say()
    say("Throughput in Mbit/s, median (min–max) over the rounds.")
    say()
    for line in table:
        say(line)
    say()
    say("How each ran (full command lines in commands.txt):")
    say(how_block)
    say()
    say("VPN CPU seconds per GB delivered, 1 stream, median over the rounds (client / gateway end):")
    for name in rows:
        g = per_gb[name]
        if g["up-client"]:
            say(
                f"- {name}: upload {med(g['up-client']):.2f} / {med(g['up-gateway']):.2f}, "
                f"download {med(g['down-client']):.2f} / {med(g['down-gateway']):.2f}"
            )
    say()
    timing_line = "seconds per round: " + ", ".join(f"{n} {med(t):.0f}" for n, t in timings.items() if t)
    say(f"# {timing_line}; throughput part {throughput_s:.0f} s")
    load_out = ""
    if not args.no_load:
        t_load = time.monotonic()
        cmd = [
            sys.executable,
            str(ROOT / "bench" / "load.py"),
            "bench",
            "--out",
            str(raw / "load"),
            *shlex.split(args.load_args),
        ]
        lr = subprocess.run(cmd, capture_output=True, text=True, check=False)
        load_out = lr.stdout.strip()
        (raw / "load.txt").write_text(lr.stdout + (f"\n# stderr\n{lr.stderr}" if lr.stderr.strip() else ""))
        say(load_out or f"bench/load.py failed: {lr.stderr.strip()[-400:]}")
        say(f"# many-client part {time.monotonic() - t_load:.0f} s")
    ru = {
        "udp_vs_wireguard_go": ("veilgate-udp", "wireguard-go"),
        "tcp_vs_openvpn_tcp": ("veilgate-tcp", "openvpn-tcp"),
    }
    summary: dict[str, float] = {}
    for label, (a, b) in ru.items():
        up, down = ratio(a, b, "up1"), ratio(a, b, "down1")
        say(f"ratio_{label}_upload={up:.2f}")
        say(f"ratio_{label}_download={down:.2f}")
        summary[label] = (up + down) / 2
    say(f"ratio_udp_vs_wireguard_go={summary['udp_vs_wireguard_go']:.2f}")
    say(f"ratio_tcp_vs_openvpn_tcp={summary['tcp_vs_openvpn_tcp']:.2f}")
    (raw / "bench.txt").write_text("\n".join(out) + "\n")
    print(f"# raw output in {raw}")
    if not args.no_write:
        doc = ROOT / "docs" / "performance.md"
        rel = raw.relative_to(ROOT) if raw.is_relative_to(ROOT) else raw
        generated = (
            f"Measured {started:%Y-%m-%d} with `make bench` (bench/compare.py) at commit {commit()}: "
            f"{args.rounds} rounds, iperf3 TCP {args.duration} s per test between the client namespace "
            "and the internet host behind the gateway. "
            f"Raw output (iperf3 JSON, ping output, command lines, this table): [{rel}/](../{rel}/).\n\n"
            "Machine: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".\n\n"
            "Throughput in Mbit/s, median (min–max) over the rounds.\n\n"
            + "\n".join(table)
            + "\n\nHow each ran:\n\n"
            + how_block
            + "\n\n"
            + (
                f"Many clients ([{rel}/load.txt](../{rel}/load.txt)):\n\n```\n{load_out}\n```\n\n"
                if load_out
                else ""
            )
            + "\n".join(f"- {line}" for line in out if line.startswith("ratio_"))
            + "\n"
        )
        write_between_markers(doc, generated)
        print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
