"""Side-by-side benchmark: veilgate (UDP and TCP) against wireguard-go and OpenVPN (UDP and TCP).

Every contender runs on the same two-namespace topology (``vgbA…`` — veth —
``vgbB…``), in one run, for several rounds; the table shows medians. Measured
per contender: iperf3 TCP throughput with 1 and 4 streams (A to B through the
tunnel), ping RTT through the tunnel, and the CPU time of the VPN processes
during the 1-stream test. Also veilgate's full handshakes per second and the
memory of a gateway core holding 10,000 idle sessions.

Prints the table and, last, ``ratio_udp_vs_wireguard_go=X`` and
``ratio_tcp_vs_openvpn_tcp=Y``; appends that output to bench/results/bench-<date>.txt and writes
the table, with a link to that file, into docs/performance.md. Run as root: ``make bench``
(installs the peers from Debian). Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import secrets
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
UA, UB = "172.30.9.1", "172.30.9.2"  # underlay, inside the benchmark's namespaces only
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
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def sh(*cmd: str, check: bool = True, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()[-400:]}")
    return result


@dataclass
class Bench:
    work: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def a(self) -> str:
        return f"vgbA{self.tag}"

    @property
    def b(self) -> str:
        return f"vgbB{self.tag}"

    def ns(
        self, ns: str, *cmd: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout)

    def spawn(self, ns: str, *cmd: str, log: str, env: dict[str, str] | None = None) -> subprocess.Popen[Any]:
        out = (self.work / log).open("a")
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd], stdout=out, stderr=subprocess.STDOUT, env=env
        )
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
        for n in (self.a, self.b):
            sh("ip", "netns", "add", n)
            self.ns(n, "ip", "link", "set", "lo", "up")
        va, vb = f"vgb{self.tag}a", f"vgb{self.tag}b"
        sh("ip", "link", "add", va, "netns", self.a, "type", "veth", "peer", "name", vb, "netns", self.b)
        self.ns(self.a, "ip", "addr", "add", f"{UA}/24", "dev", va)
        self.ns(self.b, "ip", "addr", "add", f"{UB}/24", "dev", vb)
        self.ns(self.a, "ip", "link", "set", va, "up")
        self.ns(self.b, "ip", "link", "set", vb, "up")
        self.ns(self.a, "ping", "-c", "1", "-W", "2", UB)
        self.spawn(self.b, "iperf3", "-s", log="iperf-server.log")
        time.sleep(0.5)

    def down(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)
        for n in (self.a, self.b):
            sh("ip", "netns", "del", n, check=False)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def iperf(b: Bench, address: str, streams: int, duration: int) -> float:
    """Mbit/s received; a test refused because the server still winds down the previous one
    (slow through a bloated tunnel) is tried again, up to three times."""
    error = ""
    for _ in range(3):
        r = b.ns(
            b.a,
            "iperf3",
            "-c",
            address,
            "-t",
            str(duration),
            "-P",
            str(streams),
            "-J",
            check=False,
            timeout=duration + 60,
        )
        try:
            result = json.loads(r.stdout)
        except ValueError:
            result = {"error": r.stderr.strip()[-200:] or "no output"}
        try:
            return float(result["end"]["sum_received"]["bits_per_second"]) / 1e6
        except (KeyError, TypeError, ValueError):
            error = str(result.get("error", "no result")) if isinstance(result, dict) else "no result"
        time.sleep(2)
    print(f"  iperf3 -P {streams} to {address} failed: {error}", file=sys.stderr)
    return float("nan")


def ping_ms(b: Bench, address: str, interval: float = 0.02, count: int = 50) -> float:
    """Mean RTT. At the default 20 ms interval the processes sleep between packets, so each
    packet meets cold caches; at 1 ms they stay busy (docs/performance.md, "Why an idle gap
    costs more than the cipher")."""
    r = b.ns(b.a, "ping", "-q", "-c", str(count), "-i", str(interval), address, check=False, timeout=60)
    for line in r.stdout.splitlines():
        if line.startswith("rtt"):
            return float(line.split("=")[1].split("/")[1])
    return float("nan")


# ---------------------------------------------------------------- contenders


@contextlib.contextmanager
def veilgate(
    b: Bench, transport: str, offload: bool = True, compiled: bool = True
) -> Iterator[tuple[str, list[int]]]:
    from veilgate import fastpath
    from veilgate.config.keys import encode_key, write_key_file
    from veilgate.credentials import IssuerKey, issue
    from veilgate.protocol.crypto import KeyPair

    d = b.work / f"veilgate-{transport}{'' if offload else '-nooffload'}{'' if compiled else '-python'}"
    d.mkdir(exist_ok=True)
    knob = "" if offload else "udp_offload = false\n"
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
        f'tcp_port = 8443\ntun_name = "vgbt{b.tag}"\nstatus_socket = "gw.sock"\nroutes = ["10.201.0.0/16"]\nnat = false\nuser = "root"\n{knob}{gw_tls}'
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
    )
    _wait(lambda: b.ns(b.a, "ping", "-c", "1", "-W", "1", "10.201.0.1", check=False).returncode == 0, 20)
    try:
        yield "10.201.0.1", [gproc.pid, cproc.pid]
    finally:
        b.stop(cproc)
        b.stop(gproc)


@contextlib.contextmanager
def wireguard_go(b: Bench) -> Iterator[tuple[str, list[int]]]:
    wa, wb = f"vgbwa{b.tag}", f"vgbwb{b.tag}"
    keys = {}
    for n in ("a", "b"):
        priv = sh("wg", "genkey").stdout.strip()
        pub = sh("wg", "pubkey", input=priv).stdout.strip()
        (b.work / f"wg{n}.key").write_text(priv + "\n")
        keys[n] = pub
    env = dict(os.environ, WG_PROCESS_FOREGROUND="1")
    pa = b.spawn(b.a, "wireguard-go", "-f", wa, log="wg-a.log", env=env)
    pb = b.spawn(b.b, "wireguard-go", "-f", wb, log="wg-b.log", env=env)
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
        "10.100.0.2/32",
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
        yield "10.100.0.2", [pa.pid, pb.pid]
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


@contextlib.contextmanager
def openvpn(b: Bench, proto: str, cipher: str = "AES-256-GCM") -> Iterator[tuple[str, list[int]]]:
    d = b.work / "pki"
    _pki(d)
    common = [
        "--dev-type",
        "tun",
        "--disable-dco",
        "--data-ciphers",
        cipher,
        "--ca",
        str(d / "ca.crt"),
        "--verb",
        "3",
        "--ping",
        "10",
    ]
    sp = ["--proto", "udp"] if proto == "udp" else ["--proto", "tcp-server"]
    cp = ["--proto", "udp", "--nobind"] if proto == "udp" else ["--proto", "tcp-client"]
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
    )
    _wait(lambda: b.ns(b.a, "ping", "-c", "1", "-W", "1", "10.101.0.2", check=False).returncode == 0, 30)
    try:
        yield "10.101.0.2", [pa.pid, pb.pid]
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


def contender(b: Bench, name: str) -> contextlib.AbstractContextManager[tuple[str, list[int]]]:
    if name == "veilgate-udp":
        return veilgate(b, "udp")
    if name == "veilgate-udp-nooffload":
        return veilgate(b, "udp", offload=False)
    if name == "veilgate-udp-python":
        return veilgate(b, "udp", compiled=False)
    if name == "veilgate-tcp":
        return veilgate(b, "tcp")
    if name == "veilgate-tls":
        return veilgate(b, "tls")
    if name == "wireguard-go":
        return wireguard_go(b)
    return openvpn(b, name.split("-")[1])


# ---------------------------------------------------------------- in-process figures


def handshakes_per_second() -> float:
    sys.path.insert(0, str(ROOT / "bench"))
    import core

    return float(statistics.median(core.handshake_rates(200)[0] for _ in range(3)))


def idle_sessions_memory_mb(n: int = 10_000) -> float:
    """RSS growth of a fresh process whose gateway core admits n sessions, with credentials checked."""
    code = f"""
import ipaddress, time, sys
sys.path.insert(0, {str(ROOT / "bench")!r})
from core import KEYPAIR, Addr
from veilgate.credentials import CredentialVerifier, IssuerKey, issue
from veilgate.protocol.cookie import CookieGenerator
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.gateway import GatewayProtocol
from veilgate.protocol.handshake import FinalPayload, InitiatorHandshake
from veilgate.protocol.messages import HandshakeResp
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1024
issuer = IssuerKey.generate(); gk = KeyPair.generate()
g = GatewayProtocol(gk, CredentialVerifier([issuer.public_key()]), under_load_rate=10**9, new_keypair=KEYPAIR)
cookies = CookieGenerator(gk.public); now = time.time()
base = rss()
for i in range({n}):
    key = KeyPair.generate()
    c = issue(issuer, key.public, now).encode()
    hs = InitiatorHandshake(key, gk.public, i + 1, cookies, now)
    addr = Addr((str(ipaddress.IPv4Address(0x0A000000 + i)), 1000))
    g.receive_datagram(hs.init_message, addr, now)
    resp = g.datagrams_to_send()[0][0]
    hs.read_response(HandshakeResp.decode(resp))
    final, _ = hs.write_final(FinalPayload(c))
    g.receive_datagram(final, addr, now)
    g.datagrams_to_send()
    while g.next_event(): pass
assert len(g.sessions) == {n}, len(g.sessions)
print(rss() - base)
"""
    r = sh(sys.executable, "-c", code, timeout=900)
    return float(r.stdout.strip().splitlines()[-1])


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per iperf3 test")
    ap.add_argument("--only", default=",".join(CONTENDERS))
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--no-write", action="store_true", help="do not write docs/performance.md")
    ap.add_argument(
        "--results", type=Path, default=ROOT / "bench" / "results", help="where the raw output is kept"
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("ip", "iperf3", "ping", "wg", "wireguard-go", "openvpn", "openssl"):
        if shutil.which(tool) is None:
            print(f"missing {tool}: run `make bench`, which installs the peers", file=sys.stderr)
            return 2
    names = [n for n in args.only.split(",") if n in CONTENDERS]
    out: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    started = datetime.datetime.now(datetime.UTC)
    v = versions()
    say(
        f"# make bench (bench/compare.py --only {','.join(names)} --rounds {args.rounds} "
        f"--duration {args.duration} --sessions {args.sessions}), {started:%Y-%m-%d %H:%M} UTC"
    )
    say("# machine: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    results: dict[str, dict[str, list[float]]] = {
        n: {"p1": [], "p4": [], "ping": [], "ping_busy": [], "cpu": []} for n in names
    }
    underlay: list[float] = []
    work = Path(tempfile.mkdtemp(prefix="vgbench-"))
    bench = Bench(work)
    try:
        bench.up()
        for rnd in range(1, args.rounds + 1):
            underlay.append(ping_ms(bench, UB))
            for name in names:
                try:
                    with contender(bench, name) as (address, pids):
                        time.sleep(1)
                        results[name]["ping"].append(ping_ms(bench, address))
                        results[name]["ping_busy"].append(ping_ms(bench, address, 0.001, 200))
                        c0, t0 = cpu_seconds(pids), time.monotonic()
                        results[name]["p1"].append(iperf(bench, address, 1, args.duration))
                        results[name]["cpu"].append(100 * (cpu_seconds(pids) - c0) / (time.monotonic() - t0))
                        results[name]["p4"].append(iperf(bench, address, 4, args.duration))
                except (TimeoutError, RuntimeError) as exc:
                    print(f"  {name}: setup failed: {exc}", file=sys.stderr)
                r = results[name]
                say(
                    f"round {rnd} {name:14s} 1 stream {r['p1'][-1] if r['p1'] else float('nan'):7.0f} Mbit/s"
                    f"  4 streams {r['p4'][-1] if r['p4'] else float('nan'):7.0f}"
                    f"  ping {r['ping'][-1] if r['ping'] else float('nan'):.3f} ms"
                    f" (1 ms interval {r['ping_busy'][-1] if r['ping_busy'] else float('nan'):.3f})"
                )
    finally:
        bench.down()
        shutil.rmtree(work, ignore_errors=True)
    hs = handshakes_per_second()
    mem = idle_sessions_memory_mb(args.sessions)

    def med(xs: list[float]) -> float:
        xs = [x for x in xs if x == x]
        return statistics.median(xs) if xs else float("nan")

    base = med(underlay)
    rows = [
        "| contender | 1 stream Mbit/s | 4 streams Mbit/s | ping RTT ms | added by the tunnel ms "
        "| ping RTT ms, 1 ms interval | VPN CPU % of a core |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        r = results[name]
        rows.append(
            f"| {name} | {med(r['p1']):.0f} | {med(r['p4']):.0f} | {med(r['ping']):.3f} "
            f"| {med(r['ping']) - base:.3f} | {med(r['ping_busy']):.3f} | {med(r['cpu']):.0f} |"
        )
    from veilgate import fastpath

    paths = (
        "the veilgate rows run the compiled data path (veilgate.fastpath), except veilgate-udp-python, "
        "the same on the pure-Python one"
        if fastpath.BUILT
        else "the compiled data path is not built here: every veilgate row runs the pure-Python one"
    )
    table = "\n".join(rows) + f"\n\nUnderlay (no tunnel) ping RTT: {base:.3f} ms; {paths}."
    ratio_udp = med(results.get("veilgate-udp", {}).get("p1", [])) / med(
        results.get("wireguard-go", {}).get("p1", []) or [float("nan")]
    )
    ratio_tcp = med(results.get("veilgate-tcp", {}).get("p1", [])) / med(
        results.get("openvpn-tcp", {}).get("p1", []) or [float("nan")]
    )
    added = med(results.get("veilgate-udp", {}).get("ping", [])) - base
    added_wg = med(results.get("wireguard-go", {}).get("ping", [])) - base
    ping_line = (
        f"ping RTT added by the tunnel, veilgate-udp / wireguard-go: {added / added_wg:.2f} "
        f"({added:.3f} / {added_wg:.3f} ms)"
        if added_wg > 0
        else "ping RTT added by the tunnel: no wireguard-go figure to compare with"
    )
    say()
    say(table)
    say(f"\nveilgate full handshakes per second (both sides, one core): {hs:.0f}")
    say(f"veilgate gateway core with {args.sessions} idle sessions: {mem:.0f} MB of RSS")
    say(ping_line)
    say(f"ratio_udp_vs_wireguard_go={ratio_udp:.2f}")
    say(f"ratio_tcp_vs_openvpn_tcp={ratio_tcp:.2f}")
    args.results.mkdir(parents=True, exist_ok=True)
    raw = args.results / f"bench-{started:%Y-%m-%d}.txt"
    with raw.open("a") as f:
        f.write("\n".join(out) + "\n\n")
    print(f"# raw output appended to {raw}")
    if not args.no_write:
        doc = ROOT / "docs" / "performance.md"
        generated = (
            f"Measured {started:%Y-%m-%d} with `make bench` (bench/compare.py): "
            f"{args.rounds} rounds, medians, iperf3 TCP {args.duration} s from namespace A to B through each tunnel. "
            f"Raw output: [bench/results/{raw.name}](../bench/results/{raw.name}).\n\n"
            "Machine: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".\n"
            "The machine is shared and noisy: compare medians and ratios, not single figures.\n\n"
            + table
            + f"\n\n- veilgate full handshakes per second (both sides, one core): {hs:.0f}\n"
            f"- veilgate gateway core with {args.sessions} idle sessions: {mem:.0f} MB of RSS\n"
            f"- {ping_line}\n"
            f"- ratio_udp_vs_wireguard_go={ratio_udp:.2f}\n- ratio_tcp_vs_openvpn_tcp={ratio_tcp:.2f}\n\n"
        )
        write_between_markers(doc, generated)
        print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
