"""The client daemon: asyncio around ``ClientProtocol`` and ``PathManager``, a TUN device, UDP and TCP.

It brings up the TUN with the pushed addresses, sends the default routes (v4
and v6) through the tunnel while pinning a host route to the gateway outside
it, applies the pushed DNS servers, and restores everything on exit, on
SIGTERM, and, after a crash, at its next start (from a state file).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import operator
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from veilgate import fastpath
from veilgate.client.config import ClientConfig
from veilgate.client.paths import TCP, UDP, Act, Action, PathManager
from veilgate.fastpath.keypair import CompiledKeypair
from veilgate.netfilter import NftTable, kill_switch_rules
from veilgate.protocol import messages
from veilgate.protocol.activity import ActivityRecord
from veilgate.protocol.client import ClientProtocol
from veilgate.protocol.constants import REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES
from veilgate.protocol.control import TunnelConfig
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.events import (
    ConfigReceived,
    ConnectionLost,
    HandshakeCompleted,
    HandshakeTimeout,
    PathStalled,
    ProbeAnswered,
)
from veilgate.protocol.keypair import Keypair
from veilgate.transport import loop as event_loop
from veilgate.transport.loop import QUIET_GAP, add_compiled_reader, add_data_reader, remove_data_reader
from veilgate.transport.tcp import FramedConnection, connect_tcp
from veilgate.transport.udp import UdpSender, enable_gro, recv_coalesced, split
from veilgate.tun import TunDevice, dns, netlink

log = logging.getLogger("veilgate.client")

TUN_BATCH = 256
UDP_BATCH = 256


class SystemState:
    """What the client changed on the system, recorded in a state file so a crash can be undone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.routes: list[tuple[str, str | None, str | None]] = []  # (dst, gateway, device)
        self.dns_applied = False
        self.nft_table: str | None = None

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"routes": self.routes, "dns_applied": self.dns_applied, "nft_table": self.nft_table})
        )
        os.replace(tmp, self.path)

    def undo(self, dns_state: Path) -> None:
        for dst, gateway, device in reversed(self.routes):
            with contextlib.suppress(Exception):
                netlink.delete_route(dst, gateway=gateway, device=device)
        self.routes.clear()
        if self.dns_applied:
            with contextlib.suppress(Exception):
                dns.restore_dns(dns_state)
            self.dns_applied = False
        if self.nft_table:
            with contextlib.suppress(Exception):
                NftTable(self.nft_table).delete()
            self.nft_table = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @classmethod
    def recover(cls, path: Path, dns_state: Path) -> bool:
        """Undo what a crashed client left behind; True if there was something."""
        if not path.exists():
            if dns_state.exists():
                with contextlib.suppress(Exception):
                    dns.restore_dns(dns_state)
                return True
            return False
        state = cls(path)
        try:
            data = json.loads(path.read_text())
            state.routes = [tuple(r) for r in data.get("routes", [])]
            state.dns_applied = bool(data.get("dns_applied"))
            state.nft_table = data.get("nft_table")
        except (OSError, ValueError):
            log.warning("unreadable state file %s; removing it", path)
        state.dns_applied = state.dns_applied or dns_state.exists()
        state.undo(dns_state)
        return True


class Client:
    def __init__(self, config: ClientConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        # The compiled data path, if wanted, runs only with the clock it reads (CLOCK_MONOTONIC).
        self.fast_wanted = fastpath.wanted(os.environ) and clock is time.monotonic
        self.core = ClientProtocol(
            KeyPair.from_private_bytes(config.private_key),
            config.gateway_public_key,
            config.credential,
            keepalive_interval=config.keepalive,
            stall_timeout=config.stall_timeout,
            rekey_after=config.rekey_after,
            new_keypair=CompiledKeypair if self.fast_wanted else Keypair,
        )
        self.paths = PathManager(
            mode=config.transport, udp_grace=config.udp_grace, reprobe_interval=config.reprobe_interval
        )
        self.gateway_addr = (config.gateway_host, config.udp_port)
        self.family = (
            socket.AF_INET6 if ipaddress.ip_address(config.gateway_host).version == 6 else socket.AF_INET
        )
        self.state = SystemState(config.state_dir / f"client-{config.tun_name}.json")
        self.dns_state = config.state_dir / f"client-{config.tun_name}.dns"
        self.tun: TunDevice | None = None
        self.udp: socket.socket | None = None
        self.udp_tx: UdpSender | None = None
        self._gro = False
        self.fast: fastpath.ClientPath | None = None
        """The compiled data path, when built and enabled (UDP sessions only)."""
        self._fast_keys: tuple[Keypair | None, tuple[Keypair, ...]] = (None, ())
        self._tun_wake = self._udp_wake = -1.0
        self.tcp: FramedConnection | None = None
        self._tcp_task: asyncio.Task[None] | None = None
        self._probe_paths: dict[int, str] = {}
        self._last_path: str = UDP if config.transport != TCP else TCP
        self.applied: TunnelConfig | None = None
        self.started = time.time()
        self.connected_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._stopping: asyncio.Event | None = None
        self.status_server: asyncio.AbstractServer | None = None
        self.counters: dict[str, int] = {}
        self._logged_switches = 0
        self.extra_status: dict[str, object] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        if SystemState.recover(self.state.path, self.dns_state):
            log.warning("restored routes, DNS and firewall left behind by a previous run")
        if cfg.kill_switch:
            table = f"veilgate_ks_{cfg.tun_name}"
            self.state.nft_table = table
            self.state.save()
            NftTable(table).apply(
                kill_switch_rules(cfg.tun_name, cfg.gateway_host, cfg.udp_port, cfg.tcp_port)
            )
            log.info("kill switch on: only traffic to the gateway leaves while the tunnel is down")
        self.tun = TunDevice.create(cfg.tun_name, 1420)
        netlink.prepare_tunnel_interface(self.tun.name)
        if cfg.transport != TCP:
            self.udp = socket.socket(self.family, socket.SOCK_DGRAM)
            self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
            self.udp.setblocking(False)
            self.udp.connect(self.gateway_addr)
            self.udp_tx = UdpSender(self.udp, gso=cfg.udp_offload)
            self._gro = cfg.udp_offload and enable_gro(self.udp)
            if self.fast_wanted:
                self.fast = fastpath.ClientPath(
                    self.tun.fd,
                    self.udp.fileno(),
                    cfg.udp_offload,
                    self._gro,
                    REJECT_AFTER_TIME,
                    REKEY_AFTER_MESSAGES,
                )
        fast = self.fast
        if fast is not None and (
            add_compiled_reader(loop, self.tun.fd, fast, fastpath.KIND_TUN, 0, self._after_fast)
            and self.udp is not None
            and add_compiled_reader(loop, self.udp.fileno(), fast, fastpath.KIND_UDP, 0, self._after_fast)
        ):
            log.debug("compiled data path on")
        else:
            self.fast = None
            add_data_reader(loop, self.tun.fd, self._on_tun_readable)
            if self.udp is not None:
                add_data_reader(loop, self.udp.fileno(), self._on_udp_readable)
        cfg.status_socket.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            cfg.status_socket.unlink()
        self.status_server = await asyncio.start_unix_server(self._on_status, path=str(cfg.status_socket))
        now = self.clock()
        self.core.connect(now)
        self._do(self.paths.start(now), now)
        self._after_io(now)
        log.info(
            "connecting to %s (udp %d, tcp %d, mode %s)",
            cfg.gateway_host,
            cfg.udp_port,
            cfg.tcp_port,
            cfg.transport,
        )

    async def run(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        assert self._stopping is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        try:
            await self._stopping.wait()
        finally:
            await self.stop()

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        now = self.clock()
        bye = self.core.close(now)
        if bye is not None:
            self._send(self.paths.active or self._last_path, bye)
        if self._timer is not None:
            self._timer.cancel()
        if self._tcp_task is not None:
            self._tcp_task.cancel()
        if self.tcp is not None:
            self.tcp.close()
        if self.udp is not None:
            remove_data_reader(loop, self.udp.fileno())
            self.udp.close()
        if self.tun is not None:
            remove_data_reader(loop, self.tun.fd)
            self.tun.close()
            self.tun = None
        self.state.undo(self.dns_state)
        if self.status_server is not None:
            self.status_server.close()
            with contextlib.suppress(FileNotFoundError):
                self.config.status_socket.unlink()
        log.info("disconnected; routes and DNS restored")

    # ------------------------------------------------------------ paths

    def _send(self, path: str, data: bytes) -> None:
        if path == UDP:
            if self.udp_tx is not None:
                self.udp_tx.send(data)
        elif self.tcp is not None:
            self.tcp.send(data)

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def _do(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if action.act is Act.SEND_HANDSHAKE:
                msg = self.core.handshake_message()
                if msg is not None:
                    self._send(action.path, msg)
            elif action.act is Act.OPEN_TCP:
                if self._tcp_task is None or self._tcp_task.done():
                    self._tcp_task = asyncio.ensure_future(self._open_tcp())
            elif action.act is Act.CLOSE_TCP:
                if self.tcp is not None:
                    conn, self.tcp = self.tcp, None
                    conn.close()
            elif action.act is Act.PROBE_UDP:
                probe = self.core.send_probe(now)
                if probe is not None:
                    self._probe_paths[probe[0]] = UDP
                    self._send(UDP, probe[1])
            elif action.act is Act.SEND_KEEPALIVE:
                data = self.core.send_keepalive(now)
                if data is not None:
                    self._send(action.path, data)

    async def _open_tcp(self) -> None:
        cfg = self.config
        try:
            conn = await connect_tcp(
                cfg.gateway_host, cfg.tcp_port, self._on_tcp_datagrams, self._on_tcp_close, timeout=5.0
            )
        except (OSError, TimeoutError) as exc:
            log.info("tcp connect to the gateway failed: %s", exc)
            now = self.clock()
            self._do(self.paths.tcp_failed(now), now)
            self._after_io(now)
            return
        self.tcp = conn
        now = self.clock()
        self._do(self.paths.tcp_connected(now), now)
        self._after_io(now)

    # ------------------------------------------------------------ I/O callbacks

    def _receive(self, path: str, data: bytes, now: float) -> None:
        before = self.core.authenticated_rx
        packet = self.core.receive_datagram(data, now)
        if self.core.authenticated_rx != before:
            if self.paths.active is None:
                self.paths.response_on(path, now)
            self._last_path = self.paths.active or path
        if packet is not None and self.tun is not None:
            try:
                os.write(self.tun.fd, packet)
            except OSError:
                self._count("tun-write-error")

    def _on_udp_readable(self) -> None:
        sock = self.udp
        if sock is None:
            return
        now = self.clock()
        # After a quiet spell, one lone datagram is all there is: skip the receive that would
        # find the socket empty (epoll is level-triggered, so anything more wakes us again).
        quiet = now - self._udp_wake >= QUIET_GAP
        self._udp_wake = now
        gro = self._gro
        for _ in range(UDP_BATCH):
            try:
                if gro:
                    data, segment, _addr = recv_coalesced(sock)
                else:
                    data, segment = sock.recv(65535), 0
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._count("udp-recv-error")
                continue
            parts = split(data, segment) if segment else (data,)
            for part in parts:
                self._receive(UDP, part, now)
            if quiet and len(parts) == 1:
                break
            quiet = False
        self._after_io(now)

    def _on_tcp_datagrams(self, datagrams: list[bytes], conn: FramedConnection) -> None:
        if conn is not self.tcp:
            return
        now = self.clock()
        receive = self._receive
        for data in datagrams:
            receive(TCP, data, now)
        self._after_io(now)

    def _on_tcp_close(self, conn: FramedConnection) -> None:
        if conn is not self.tcp:
            return
        self.tcp = None
        now = self.clock()
        log.info("tcp connection to the gateway closed")
        self._do(self.paths.tcp_failed(now), now)
        self._after_io(now)

    def _on_tun_readable(self) -> None:
        if self.tun is None:
            return
        now = self.clock()
        # After a quiet spell the first packet leaves at once, before the read that finds the
        # device empty: a lone packet (an interactive exchange) is not held for a batch. Under
        # load wake-ups follow each other closely and the packets of one leave together.
        quiet = now - self._tun_wake >= QUIET_GAP
        self._tun_wake = now
        fd = self.tun.fd
        send_packet = self.core.send_packet
        path = self.paths.active or self._last_path
        # The sealed packets of one wake-up leave together: on UDP as GSO runs, on TCP in one write.
        tx: UdpSender | FramedConnection | None = self.udp_tx if path == UDP else self.tcp
        for _ in range(TUN_BATCH):
            try:
                packet = os.read(fd, 65535)
            except (BlockingIOError, InterruptedError):
                break
            if not packet:
                break
            data = send_packet(packet, now)
            if data is not None and tx is not None:  # no carrier open on this path: lost, as _send would
                if quiet:
                    tx.send(data)
                    quiet = False
                else:
                    tx.queue(data)
        if tx is not None:
            tx.flush()
        self._after_io(now)

    def _after_io(self, now: float) -> None:
        self._process_events(now)
        out = self.core.datagrams_to_send()
        if out:
            active = self.paths.active
            for data in out:
                if data[0] == messages.TYPE_HANDSHAKE_INIT and active != TCP:
                    # A handshake races on every open path: before one is chosen, and on UDP after a
                    # rekey stalled there (the stall opened TCP; see PathManager.stalled).
                    if self.config.transport != TCP:
                        self._send(UDP, data)
                    if self.paths.tcp_open:
                        self._send(TCP, data)
                elif active is not None:
                    self._send(active, data)
                else:
                    self._send(self._last_path, data)
        self._arm_timer()
        if self.fast is not None:
            self._update_fast_keys()

    # ------------------------------------------------------------ the compiled data path

    def _update_fast_keys(self) -> None:
        """Hand the compiled data path the keypairs it may use now (none for sending off UDP)."""
        send, recv = self.core.data_path_keypairs()
        if self.paths.active is None:
            send, recv = None, ()
        elif self.paths.active != UDP:
            send = None
        old_send, old_recv = self._fast_keys
        if send is old_send and len(recv) == len(old_recv) and all(map(operator.is_, recv, old_recv)):
            return
        assert self.fast is not None
        self._fast_keys = (send, recv)
        self.fast.set_keys(
            send.keys if isinstance(send, CompiledKeypair) else None,
            tuple(kp.keys for kp in recv if isinstance(kp, CompiledKeypair)),
        )

    def _after_fast(self) -> None:
        """After the compiled loops ran: account for what they did, handle what they passed on."""
        fast = self.fast
        if fast is None:
            return
        pending, activity = fast.take()
        now = self.clock()
        if activity is not None:
            # The module's activity is still a tuple without a count of IP packets delivered (the
            # client's core keeps none): an ActivityRecord until it returns an Activity itself.
            tx_packets, tx_bytes, last_tx, first_unanswered, authenticated, rx_bytes, last_rx = activity
            self.core.account(
                ActivityRecord(
                    tx_packets, tx_bytes, last_tx, first_unanswered, authenticated, 0, rx_bytes, last_rx
                )
            )
        for kind, data in pending:
            if kind == fastpath.PENDING_TUN:
                self._send_packet(data, now)
            elif kind == fastpath.PENDING_DATAGRAM:
                self._receive(UDP, data, now)
            else:
                self.core.receive_opened(data)
        self._after_io(now)

    def _send_packet(self, packet: bytes, now: float) -> None:
        data = self.core.send_packet(packet, now)
        if data is not None:
            self._send(self.paths.active or self._last_path, data)

    def _arm_timer(self) -> None:
        timers = [t for t in (self.core.get_timer(), self.paths.get_timer()) if t is not None]
        at = min(timers) if timers else None
        if self._timer_at is not None and (at is None or self._timer_at <= at):
            # The armed timer comes first (deadlines such as the keepalive move later with every
            # packet): let it fire, find nothing due, and re-arm then, instead of re-arming per packet.
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None and self._loop is not None:
            self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.clock()
        self.core.handle_timer(now)
        self._do(self.paths.handle_timer(now), now)
        self._after_io(now)

    def _process_events(self, now: float) -> None:
        while (event := self.core.next_event()) is not None:
            if isinstance(event, ConfigReceived):
                self._apply(event.config)
            elif isinstance(event, HandshakeCompleted):
                if not event.rekey:
                    self.connected_at = now
                log.debug("handshake completed (%s)", "rekey" if event.rekey else "first")
            elif isinstance(event, PathStalled):
                was = self.paths.active
                actions = self.paths.stalled(now, event.silent_for)
                if was != self.paths.active:
                    log.info("%s path stalled (nothing back for %.1f s); trying tcp", was, event.silent_for)
                self._do(actions, now)
            elif isinstance(event, ProbeAnswered):
                path = self._probe_paths.pop(event.probe_id, None)
                if path is not None:
                    before = self.paths.active
                    self._do(self.paths.probe_answered(path, now), now)
                    if before != self.paths.active:
                        log.info("udp works again; back on udp")
            elif isinstance(event, ConnectionLost):
                log.warning("connection lost; reconnecting")
            elif isinstance(event, HandshakeTimeout):
                log.warning("the gateway has not answered for 90 s; still trying")
        switches = self.paths.switches
        while self._logged_switches < len(switches):
            sw = switches[self._logged_switches]
            self._logged_switches += 1
            log.info("on %s (%s, %.2f s)", sw.new, sw.why, sw.took)

    # ------------------------------------------------------------ system configuration

    def _apply(self, config: TunnelConfig) -> None:
        assert self.tun is not None
        tun = self.tun.name
        old = self.applied
        netlink.set_link(tun, up=True, mtu=config.mtu)
        # New addresses first: removing a device's last address makes the kernel drop its routes.
        for iface in (config.ipv4, config.ipv6):
            if iface is not None:
                netlink.add_address(tun, str(iface))
        if old is not None:
            for iface in (old.ipv4, old.ipv6):
                if iface is not None and iface not in (config.ipv4, config.ipv6):
                    with contextlib.suppress(Exception):
                        netlink.delete_address(tun, str(iface))
        if old is None:
            self._pin_gateway_route()
        for net in config.routes:
            for half in _halves(net):
                self._add_route(half, None, tun)
        if self.config.apply_dns and config.dns and not self.state.dns_applied:
            dns.apply_dns([str(a) for a in config.dns], self.dns_state)
            self.state.dns_applied = True
        self.state.save()
        self.applied = config
        log.info(
            "tunnel up: %s%s, mtu %d, lease %d s",
            config.ipv4,
            f" {config.ipv6}" if config.ipv6 else "",
            config.mtu,
            config.lease,
        )

    def _pin_gateway_route(self) -> None:
        route = netlink.route_to(self.config.gateway_host)
        if route is None:
            log.warning("no route to the gateway found; not pinning one")
            return
        via, device = route
        host = ipaddress.ip_address(self.config.gateway_host)
        self._add_route(f"{host}/{host.max_prefixlen}", via, device)

    def _add_route(self, dst: str, gateway: str | None, device: str | None) -> None:
        try:
            netlink.add_route(dst, gateway=gateway, device=device)
        except Exception as exc:
            log.warning("could not add route %s: %s", dst, exc)
            return
        if (dst, gateway, device) not in self.state.routes:
            self.state.routes.append((dst, gateway, device))
            self.state.save()

    def rotate_identity(self, key: KeyPair, credential: bytes) -> None:
        """Switch to a new static key and credential; the session, its addresses and TCP flows inside stay."""
        now = self.clock()
        self.core.rotate_identity(key, credential, now)
        self._after_io(now)

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, object]:
        now = self.clock()
        cfg = self.applied
        return {
            "role": "client",
            "connected": self.core.connected,
            "transport": self.paths.active,
            "data_path": "compiled" if self.fast is not None else "python",
            "ipv4": str(cfg.ipv4) if cfg and cfg.ipv4 else None,
            "ipv6": str(cfg.ipv6) if cfg and cfg.ipv6 else None,
            "rx_bytes": self.core.rx_bytes,
            "tx_bytes": self.core.tx_bytes,
            "last_handshake_age": round(now - self.core.last_handshake, 1)
            if self.core.last_handshake is not None
            else None,
            "switches": [
                {
                    "from": s.old,
                    "to": s.new,
                    "why": s.why,
                    "took": round(s.took, 3),
                    "ago": round(now - s.at, 1),
                }
                for s in self.paths.switches
            ],
            "counters": _sum(dict(self.core.counters), self.counters, self._udp_counters()),
        } | self.extra_status

    def _udp_counters(self) -> dict[str, int]:
        tx = self.udp_tx
        if tx is None:
            return {}
        counters = {
            "udp-send-dropped": tx.dropped,
            "udp-datagrams-out": tx.datagrams,
            "udp-sends": tx.syscalls,
        }
        if self.fast is not None:
            counters = _sum(counters, self.fast.counters())
        return counters

    async def _on_status(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(self.status()).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()


def _sum(*counters: dict[str, int]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in counters:
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return total


def _halves(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[str]:
    """A default route as two halves, so it wins over the existing default without replacing it."""
    if net.prefixlen == 0:
        return [str(n) for n in net.subnets(prefixlen_diff=1)]
    return [str(net)]


def run_client(config: ClientConfig) -> int:
    logging.getLogger("veilgate").setLevel(config.log_level.upper())
    client = Client(config)
    event_loop.run(client.run())
    return 0
