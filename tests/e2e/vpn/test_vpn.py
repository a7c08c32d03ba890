"""The VPN end to end: real TUN devices, namespaces, veths, nftables, ping and curl."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from veilgate.config.keys import decode_key, encode_key
from veilgate.netfilter import NftTable
from veilgate.protocol.crypto import KeyPair
from veilgate.testing import Topology, netns
from veilgate.testing.deploy import Deployment, wait_for

from .conftest import WebServer

pytestmark = pytest.mark.e2e


def ping(topo: Topology, ns: str, address: str, count: int = 3, timeout: float = 2) -> bool:
    cmd = [
        "ping",
        "-6" if ":" in address else "-4",
        "-c",
        str(count),
        "-i",
        "0.2",
        "-W",
        str(timeout),
        address,
    ]
    return topo.ns_run(ns, *cmd, check=False, timeout=30).returncode == 0


def owner_of(address: str, workers: int) -> int:
    return int(ipaddress.ip_address(address)) % workers


def download(topo: Topology, ns: str, url: str, dest: Path, max_time: float = 60) -> str:
    topo.ns_run(
        ns, "curl", "-sS", "--fail", "--max-time", str(max_time), "-o", str(dest), url, timeout=max_time + 10
    )
    return hashlib.sha256(dest.read_bytes()).hexdigest()


def test_ping_v4_and_v6_and_transfer_with_checksum(
    deploy: Deployment, web: WebServer, tmp_path: Path, data_path: str
) -> None:
    topo = deploy.topo
    assert not ping(topo, topo.client, netns.INTERNET_V4, count=1, timeout=1), "no tunnel yet: no way out"
    deploy.start_client("c1")
    status = deploy.wait_client("c1")
    assert status["transport"] == "udp"
    assert status["data_path"] == data_path and deploy.gateway_status()["data_path"] == data_path
    assert ping(topo, topo.client, netns.INTERNET_V4)
    assert ping(topo, topo.client, netns.INTERNET_V6)
    assert download(topo, topo.client, web.url4, tmp_path / "b4") == web.sha256
    assert download(topo, topo.client, web.url6, tmp_path / "b6") == web.sha256
    gw = deploy.gateway_status()
    assert gw["sessions"] == 1 and gw["sessions_by_transport"] == {"udp": 1}
    assert gw["rx_bytes"] > 0 and gw["tx_bytes"] > 2 * web.size
    # The downloads left the gateway in GSO runs: fewer sends than datagrams, none dropped.
    assert gw["udp"]["gso"] and gw["udp"]["gro"]
    assert gw["udp"]["sends"] < gw["udp"]["datagrams_out"] and gw["udp"]["dropped"] == 0


def test_udp_blocked_from_the_start_connects_over_tcp(deploy: Deployment) -> None:
    topo = deploy.topo
    topo.block_udp()
    deploy.make_client("c1", udp_grace=0.3)
    deploy.start_client("c1")
    status = deploy.wait_client("c1", transport="tcp", timeout=10)
    first = status["switches"][0]
    assert first["to"] == "tcp"
    # TCP is raced 0.3 s after the UDP attempt; the first packet flows within 1 s after that.
    assert first["took"] < 0.3 + 1.0, status
    assert ping(topo, topo.client, netns.INTERNET_V4)
    assert deploy.gateway_status()["sessions_by_transport"] == {"tcp": 1}


def test_udp_blocked_mid_transfer_then_back(deploy: Deployment, web: WebServer, tmp_path: Path) -> None:
    topo = deploy.topo
    deploy.make_client("c1", reprobe_interval=2.0)
    deploy.start_client("c1")
    deploy.wait_client("c1", transport="udp")
    dest = tmp_path / "blob"
    # A slow transfer (paced by the server at 1 MB/s) so that the block lands in its middle.
    curl = topo.spawn(
        topo.client,
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "60",
        "-o",
        str(dest),
        web.url4 + "?rate=1000000",
        stderr=subprocess.PIPE,
    )
    time.sleep(2)
    assert curl.poll() is None, "the transfer ended before UDP was blocked"
    topo.block_udp()
    deploy.wait_client("c1", transport="tcp", timeout=15)
    assert curl.wait(timeout=60) == 0, curl.stderr.read() if curl.stderr else ""
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == web.sha256
    t0 = time.monotonic()
    topo.unblock_udp()
    deploy.wait_client("c1", transport="udp", timeout=2.0 + 3.0)
    assert time.monotonic() - t0 < 2.0 + 3.0
    assert ping(topo, topo.client, netns.INTERNET_V4)
    switches = deploy.client_status("c1")["switches"]
    assert [s["to"] for s in switches] == ["udp", "tcp", "udp"]


def test_two_clients_get_distinct_addresses_and_cannot_reach_each_other(deploy: Deployment) -> None:
    topo = deploy.topo
    ns2, _ = topo.add_client(2)
    deploy.start_client("c1")
    deploy.make_client("c2")
    deploy.start_client("c2", ns=ns2)
    a = deploy.wait_client("c1")
    b = deploy.wait_client("c2")
    ip_a, ip_b = a["ipv4"].split("/")[0], b["ipv4"].split("/")[0]
    assert ip_a != ip_b and a["ipv6"] != b["ipv6"]
    assert ping(topo, topo.client, netns.INTERNET_V4)
    assert ping(topo, ns2, netns.INTERNET_V4)
    assert not ping(topo, topo.client, ip_b, count=2, timeout=1)
    assert not ping(topo, ns2, ip_a, count=2, timeout=1)
    gw = deploy.gateway_status()
    if gw.get("workers", 1) == 1 or owner_of(ip_a, gw["workers"]) == owner_of(ip_b, gw["workers"]):
        # One worker holds both: it drops them itself. Across workers the gateway's nftables
        # isolation rules drop them on the way back into the TUN device (the pings above).
        assert gw["counters"].get("client-to-client-dropped", 0) >= 2


def test_gateway_restart_client_reconnects(deploy: Deployment) -> None:
    topo = deploy.topo
    deploy.start_client("c1")
    deploy.wait_client("c1")
    assert deploy.stop_gateway() == 0
    deploy.start_gateway()
    wait_for(
        lambda: ping(topo, topo.client, netns.INTERNET_V4, count=1, timeout=1), 20, "traffic after restart"
    )
    assert deploy.gateway_status()["sessions"] == 1


@pytest.mark.parametrize("case", ["expired", "forged"])
def test_bad_credential_refused_others_undisturbed(deploy: Deployment, case: str) -> None:
    topo = deploy.topo
    ns2, _ = topo.add_client(2)
    deploy.start_client("c1")
    deploy.wait_client("c1")
    if case == "expired":
        deploy.make_client("bad", now=time.time() - 7200, lifetime=600)
    else:
        deploy.make_client("bad", forged=True)
    deploy.start_client("bad", ns=ns2)
    wait_for(
        lambda: (
            deploy.gateway_status()["counters"].get(
                f"refused-{'expired' if case == 'expired' else 'unknown-issuer'}", 0
            )
            > 0
        ),
        10,
        "the refusal",
    )
    assert not deploy.client_status("bad")["connected"]
    assert deploy.gateway_status()["sessions"] == 1
    assert ping(topo, topo.client, netns.INTERNET_V4)
    log = (deploy.dir / "gateway.log").read_text()
    assert "handshake refused: credential" in log


STALL_TIMEOUT = 3.0
"""The client's stall_timeout in the kill-switch tests (its default)."""


def tunnel_down(status: dict[str, Any]) -> bool:
    """The client reports the tunnel down: no working path, or no confirmed keypair.

    After the gateway vanishes, the first comes stall_timeout after the first unanswered packet
    (the path manager drops the path); ``connected`` stays true until the keypair expires
    (REJECT_AFTER_TIME, 180 s after the handshake).
    """
    return not status["connected"] or status["transport"] is None


def test_kill_switch_blocks_traffic_while_tunnel_is_down(deploy: Deployment) -> None:
    topo = deploy.topo
    # Without the kill switch the client's ISP network is reachable directly.
    assert ping(topo, topo.client, netns.ROUTER_C_V4, count=1)
    deploy.make_client("c1", kill_switch=True, stall_timeout=STALL_TIMEOUT)
    deploy.start_client("c1")
    deploy.wait_client("c1")
    assert ping(topo, topo.client, netns.INTERNET_V4)
    deploy.stop_gateway()
    # A packet into the tunnel goes unanswered; stall_timeout later the client reports the tunnel down.
    assert not ping(topo, topo.client, netns.INTERNET_V4, count=1, timeout=1)
    wait_for(
        lambda: tunnel_down(deploy.client_status("c1")),
        STALL_TIMEOUT + 2,
        "the client to report the tunnel down",
        deploy.dir / "c1.log",
    )
    # The tunnel is down: nothing leaves but traffic to the gateway.
    assert not ping(topo, topo.client, netns.ROUTER_C_V4, count=2, timeout=1)
    assert not ping(topo, topo.client, netns.INTERNET_V4, count=2, timeout=1)
    r = topo.ns_run(
        topo.client, "curl", "-s", "--max-time", "2", f"http://{netns.ROUTER_C_V4}:9/", check=False
    )
    assert r.returncode != 0
    # Stopping the client on purpose lifts it.
    deploy.stop_client("c1")
    assert ping(topo, topo.client, netns.ROUTER_C_V4, count=1)


CONNECT_PROBE = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print("open")
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("blocked")
"""


def tcp_probe(topo: Topology, ns: str, host: str, port: int) -> str:
    """'open', 'refused' (the host answered with a reset) or 'blocked' (nothing came back, or EPERM)."""
    return topo.ns_run(ns, sys.executable, "-c", CONNECT_PROBE, host, str(port)).stdout.strip()


def test_kill_switch_outlives_a_sigkill_and_the_next_start_lifts_it(deploy: Deployment) -> None:
    topo = deploy.topo

    def tables() -> str:
        return topo.ns_run(topo.client, "nft", "list", "tables").stdout

    before = tables()
    deploy.make_client("c1", kill_switch=True)
    proc = deploy.start_client("c1")
    deploy.wait_client("c1")
    assert ping(topo, topo.client, netns.INTERNET_V4)
    assert tables() != before
    proc.kill()  # SIGKILL: no clean-up of any kind
    proc.wait()
    deploy.clients.pop("c1")
    # The client is gone, its rules are not: nothing leaves but traffic to the gateway's ports.
    assert not ping(topo, topo.client, netns.ROUTER_C_V4, count=2, timeout=1)
    assert not ping(topo, topo.client, netns.INTERNET_V4, count=2, timeout=1)
    assert not ping(topo, topo.client, netns.GATEWAY_V4, count=2, timeout=1)
    assert tcp_probe(topo, topo.client, netns.ROUTER_C_V4, 9) == "blocked"
    assert tcp_probe(topo, topo.client, netns.GATEWAY_V4, 9) == "blocked"
    assert tcp_probe(topo, topo.client, netns.GATEWAY_V4, deploy.tcp_port) == "open"
    # The next start, without a kill switch configured, finds the leftovers, says so and removes them.
    log = deploy.dir / "c1.log"
    seen = len(log.read_text())
    deploy.make_client("c1", kill_switch=False)
    deploy.start_client("c1")
    deploy.wait_client("c1")
    assert "WARNING veilgate.client: restored routes, DNS and firewall left behind" in log.read_text()[seen:]
    assert tables() == before
    assert ping(topo, topo.client, netns.ROUTER_C_V4, count=1)
    assert tcp_probe(topo, topo.client, netns.GATEWAY_V4, 9) == "refused"
    assert ping(topo, topo.client, netns.INTERNET_V4)
    assert deploy.stop_client("c1") == 0


def test_client_restores_routes_and_dns_on_exit_and_after_a_crash(deploy: Deployment) -> None:
    topo = deploy.topo
    resolv = Path("/etc/netns") / topo.client / "resolv.conf"
    original = resolv.read_text()
    deploy.start_client("c1")
    deploy.wait_client("c1")
    assert "nameserver 10.201.0.1" in resolv.read_text()
    routes = topo.ns_run(topo.client, "ip", "route").stdout
    assert "0.0.0.0/1" in routes and netns.GATEWAY_V4 in routes
    assert deploy.stop_client("c1") == 0
    assert resolv.read_text() == original
    routes = topo.ns_run(topo.client, "ip", "route").stdout
    assert "0.0.0.0/1" not in routes and f"{netns.GATEWAY_V4} via" not in routes
    # A crash (SIGKILL) leaves DNS and the gateway route behind; the next start repairs them.
    proc = deploy.start_client("c1")
    deploy.wait_client("c1")
    proc.kill()
    proc.wait()
    deploy.clients.pop("c1")
    assert "nameserver 10.201.0.1" in resolv.read_text()
    deploy.start_client("c1")
    deploy.wait_client("c1")
    assert deploy.stop_client("c1") == 0
    assert resolv.read_text() == original
    assert f"{netns.GATEWAY_V4} via" not in topo.ns_run(topo.client, "ip", "route").stdout


JUNK_SENDER = r"""
import os, random, socket, sys, struct
host, udp_port, tcp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(7)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(3000):
    kind = i % 4
    if kind == 0:
        data = os.urandom(rng.randrange(0, 1500))
    else:
        # plausible headers with junk behind them
        data = bytes([kind + 1 if kind < 3 else 5, 1, 0, 0]) + os.urandom(rng.randrange(0, 1400))
    u.sendto(data, (host, udp_port))
for i in range(20):
    t = socket.create_connection((host, tcp_port), timeout=5)
    if i % 2:
        t.sendall(os.urandom(rng.randrange(1, 5000)))
    else:
        for _ in range(50):
            body = bytes([5, 1, 0, 0]) + os.urandom(rng.randrange(20, 1400))
            t.sendall(struct.pack("!H", len(body)) + body)
        t.sendall(b"\x00\x00")
    t.close()
"""


def test_malformed_datagrams_and_frames_are_dropped(deploy: Deployment) -> None:
    topo = deploy.topo
    ns2, _ = topo.add_client(2)
    deploy.start_client("c1")
    deploy.wait_client("c1")
    pinger = topo.spawn(
        topo.client,
        "ping",
        "-c",
        "60",
        "-i",
        "0.05",
        "-W",
        "1",
        netns.INTERNET_V4,
        stdout=subprocess.PIPE,
        text=True,
    )
    topo.ns_run(
        ns2,
        sys.executable,
        "-c",
        JUNK_SENDER,
        netns.GATEWAY_V4,
        str(deploy.udp_port),
        str(deploy.tcp_port),
        timeout=60,
    )
    out, _ = pinger.communicate(timeout=30)
    assert " 0% packet loss" in out, out[-300:]
    status = deploy.gateway_status()
    dropped = sum(v for k, v in status["counters"].items() if k.startswith("drop-"))
    assert dropped >= 2900
    assert status["sessions"] == 1
    assert deploy.gateway_proc is not None and deploy.gateway_proc.poll() is None
    assert ping(topo, topo.client, netns.INTERNET_V4)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_status_shows_no_keys_or_addresses(deploy: Deployment, log_format: str) -> None:
    topo = deploy.topo
    if log_format == "json":
        deploy.stop_gateway()
        (deploy.dir / "gateway.log").unlink()
        deploy.start_gateway(log_format="json")
    deploy.start_client("c1")
    client = deploy.wait_client("c1")
    tunnel_ip = client["ipv4"].split("/")[0]
    r = topo.ns_run(
        topo.gateway, sys.executable, "-m", "veilgate", "status", "--socket", str(deploy.gateway_socket)
    )
    assert re.search(r"^sessions +1 live \(udp 1\)", r.stdout, re.MULTILINE), r.stdout
    assert re.search(r"^since start +1 session opened", r.stdout, re.MULTILINE), r.stdout
    log = (deploy.dir / "gateway.log").read_text()
    if log_format == "json":
        entries = [json.loads(line) for line in log.splitlines()]
        assert {"gateway up", "session established"} <= {
            e["message"].split(":")[0].split(";")[0] for e in entries
        }
        assert all(set(e) == {"time", "level", "logger", "message"} for e in entries)
    text = r.stdout + log
    key_b64 = (deploy.dir / "c1.key").read_text().strip()
    public = encode_key(KeyPair.from_private_bytes(decode_key(key_b64)).public)
    for secret in (
        tunnel_ip,
        netns.CLIENT_V4,
        public,
        public[:16],
        (deploy.dir / "c1.cred").read_text().strip()[:16],
    ):
        assert secret not in text
    assert not any(
        p.suffix not in (".toml", ".key", ".log", ".sock", ".cred")
        for p in deploy.dir.iterdir()
        if p.is_file()
    )


def test_egress_nat_set_up_and_torn_down_by_the_gateway(deploy: Deployment) -> None:
    topo = deploy.topo
    # The internet host no longer knows the tunnel pool: only NAT at the gateway gets replies back.
    topo.ns_run(topo.internet, "ip", "route", "del", netns.TUNNEL_POOL_V4)
    deploy.start_client("c1")
    deploy.wait_client("c1")
    assert not ping(topo, topo.client, netns.INTERNET_V4, count=2, timeout=1)
    deploy.stop_client("c1")
    deploy.stop_gateway()
    deploy.start_gateway(nat=True, nat_interface=f"vg{topo.tag}g1")
    assert "masquerade" in topo.ns_run(topo.gateway, "nft", "list", "ruleset").stdout
    deploy.start_client("c1")
    deploy.wait_client("c1")
    assert ping(topo, topo.client, netns.INTERNET_V4)
    deploy.stop_client("c1")
    assert deploy.stop_gateway() == 0
    assert "masquerade" not in topo.ns_run(topo.gateway, "nft", "list", "ruleset").stdout


def test_without_udp_offload_one_datagram_per_send(
    deploy: Deployment, web: WebServer, tmp_path: Path
) -> None:
    """udp_offload = false on both sides (for kernels or devices where GSO/GRO misbehave): same traffic."""
    topo = deploy.topo
    assert deploy.stop_gateway() == 0
    deploy.start_gateway(udp_offload=False)
    deploy.make_client("c1", udp_offload=False)
    deploy.start_client("c1")
    deploy.wait_client("c1", transport="udp")
    assert ping(topo, topo.client, netns.INTERNET_V4)
    assert download(topo, topo.client, web.url4, tmp_path / "b") == web.sha256
    udp = deploy.gateway_status()["udp"]
    assert not udp["gso"] and not udp["gro"]
    assert udp["sends"] == udp["datagrams_out"] > 0
    counters = deploy.client_status("c1")["counters"]
    assert counters["udp-sends"] == counters["udp-datagrams-out"] > 0


REPLAYER = r"""
# An on-path attacker in the router: copies transport datagrams the client sends to the gateway
# (AF_PACKET on the client-side veth), then sends the identical IP packets again on the gateway-side
# veth, with the Ethernet header a forwarding router would have written.
import json, socket, sys, time
listen_dev, inject_dev, gateway_mac, client, gateway, port, want = sys.argv[1:8]
want = int(want)


def udp_with_checksum(addresses, udp):
    # A veth hands over packets with the UDP checksum left to offload (only the pseudo-header sum
    # is filled in): put in the full checksum a real wire would carry.
    udp = bytearray(udp)
    udp[6:8] = b"\0\0"
    data = addresses + bytes((0, 17)) + len(udp).to_bytes(2, "big") + udp
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    udp[6:8] = ((~total & 0xFFFF) or 0xFFFF).to_bytes(2, "big")
    return bytes(udp)


ETH_P_IP, PACKET_OUTGOING, TYPE_TRANSPORT = 0x0800, 4, 5
cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
cap.bind((listen_dev, ETH_P_IP))
cap.settimeout(0.2)
src, dst = socket.inet_aton(client), socket.inet_aton(gateway)
print("ready", flush=True)
frames, deadline = [], time.monotonic() + 20
while len(frames) < want and time.monotonic() < deadline:
    try:
        frame, addr = cap.recvfrom(65535)
    except TimeoutError:
        continue
    ip = frame[14:]
    if addr[2] == PACKET_OUTGOING or len(ip) < 28 or ip[9] != 17 or ip[12:16] != src or ip[16:20] != dst:
        continue
    ihl = (ip[0] & 15) * 4
    total = int.from_bytes(ip[2:4], "big")
    udp = ip[ihl:total]
    if int.from_bytes(udp[2:4], "big") != int(port) or len(udp) < 8 + 32 or udp[8] != TYPE_TRANSPORT:
        continue
    frames.append(frame[:14 + ihl] + udp_with_checksum(ip[12:20], udp))
out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
out.bind((inject_dev, ETH_P_IP))
own_mac = out.getsockname()[4]
for frame in frames:
    out.send(bytes.fromhex(gateway_mac.replace(":", "")) + own_mac + frame[12:])
print(json.dumps({"replayed": len(frames)}), flush=True)
"""


def _mac(topo: Topology, ns: str, dev: str) -> str:
    return topo.ns_run(ns, "cat", f"/sys/class/net/{dev}/address").stdout.strip()


def test_replayed_transport_datagrams_are_dropped_and_the_tunnel_keeps_working(
    deploy: Deployment, data_path: str
) -> None:
    topo = deploy.topo
    deploy.start_client("c1")
    deploy.wait_client("c1")
    assert deploy.gateway_status()["data_path"] == data_path
    assert ping(topo, topo.client, netns.INTERNET_V4, count=1)
    before = deploy.gateway_status()["counters"].get("drop-replay", 0)
    want = 10
    attacker = topo.spawn(
        topo.router,
        sys.executable,
        "-c",
        REPLAYER,
        f"vg{topo.tag}r0",
        f"vg{topo.tag}r1",
        _mac(topo, topo.gateway, f"vg{topo.tag}g0"),
        netns.CLIENT_V4,
        netns.GATEWAY_V4,
        str(deploy.udp_port),
        str(want),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert attacker.stdout is not None
    assert attacker.stdout.readline().strip() == "ready"
    # Real tunnel traffic for the attacker to copy: the original datagrams all arrive.
    assert ping(topo, topo.client, netns.INTERNET_V4, count=want + 2)
    out, _ = attacker.communicate(timeout=30)
    assert json.loads(out.splitlines()[-1])["replayed"] == want
    # Every copy is refused by the replay window of the data path in use, and counted.
    wait_for(
        lambda: deploy.gateway_status()["counters"].get("drop-replay", 0) - before >= want,
        5,
        "the replayed datagrams counted as replays",
        deploy.dir / "gateway.log",
    )
    gw = deploy.gateway_status()
    assert gw["counters"].get("drop-replay", 0) - before == want
    assert gw["sessions"] == 1 and gw["counters"].get("sessions-established") == 1
    assert ping(topo, topo.client, netns.INTERNET_V4)
    assert deploy.client_status("c1")["connected"]


def test_client_source_address_changes_mid_session_without_a_new_handshake(
    deploy: Deployment, data_path: str
) -> None:
    """NAT rebinding: the router starts hiding the client behind another address and port."""
    topo = deploy.topo
    if shutil.which("conntrack") is None:
        pytest.skip("needs conntrack (make test installs it)")
    deploy.start_client("c1")
    deploy.wait_client("c1")
    assert ping(topo, topo.client, netns.INTERNET_V4)
    gw = deploy.gateway_status()
    assert gw["data_path"] == data_path
    established = gw["counters"]["sessions-established"]
    rekeys = gw["counters"].get("rekeys", 0)
    roamed = gw["counters"].get("roamed", 0)
    handshake_age, t0 = deploy.client_status("c1")["last_handshake_age"], time.monotonic()
    # From now on the client's datagrams reach the gateway from the router's address and port 40000;
    # flushing connection tracking makes the next datagram take the new mapping. The gateway loses
    # its route to the client's own address: the old endpoint is gone, as behind a real NAT.
    nat = NftTable(f"vgroam{topo.tag}", netns=topo.router)
    nat.apply(
        "  chain postrouting_rebind {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname "vg{topo.tag}r1" ip saddr {netns.CLIENT_V4} ip daddr {netns.GATEWAY_V4} '
        f"udp dport {deploy.udp_port} snat ip to {netns.ROUTER_G_V4}:40000\n"
        "  }\n"
    )
    topo.ns_run(topo.router, "conntrack", "-F")
    topo.ns_run(topo.gateway, "ip", "route", "del", "172.31.1.0/24")
    assert ping(topo, topo.client, netns.INTERNET_V4, count=5)
    entries = topo.ns_run(topo.router, "conntrack", "-L", "-p", "udp", "--dport", str(deploy.udp_port)).stdout
    assert f"dst={netns.ROUTER_G_V4} sport={deploy.udp_port} dport=40000" in entries, entries
    gw = deploy.gateway_status()
    assert gw["counters"].get("roamed", 0) > roamed
    # The same session: no handshake on either side, the client connected all along.
    assert gw["counters"]["sessions-established"] == established and gw["sessions"] == 1
    assert gw["counters"].get("rekeys", 0) == rekeys
    client = deploy.client_status("c1")
    assert client["connected"] and client["transport"] == "udp"
    assert client["last_handshake_age"] >= handshake_age + (time.monotonic() - t0) - 0.5
    assert ping(topo, topo.client, netns.INTERNET_V4)
