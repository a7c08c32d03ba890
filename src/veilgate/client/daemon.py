"""The client daemon: around ``ClientProtocol`` and ``PathManager``, a TUN device, UDP, TLS and TCP.

The core decides what to send, ``PathManager`` decides on which path (UDP, TLS or plain TCP), and this module
only carries out their decisions: it reads the TUN device and the sockets, sends what they say
where they say, applies pushed configurations to the system (``system``), and restores the system
on exit. Where the compiled data path runs, it serves an established session's UDP packets and
this module sees only what it passes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import operator
import os
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from veilgate import fastpath
from veilgate.client import addresses
from veilgate.client.config import ClientConfig, load_client_config
from veilgate.client.paths import STREAMS, TCP, TLS, UDP, Act, Action, PathManager
from veilgate.client.system import SystemState, TunnelSetup
from veilgate.config import ConfigError
from veilgate.driver import Driver, Runtime, Wake, read_tun, read_udp, total, write_tun
from veilgate.fastpath.keypair import CompiledKeypair
from veilgate.monitor.metrics import Metric, Value, families, split_counters
from veilgate.netfilter import kill_switch_rules_for
from veilgate.protocol import covers
from veilgate.protocol.client import ClientProtocol
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
from veilgate.systemd.notify import Service, changed_fields, set_log_level
from veilgate.systemd.privileges import CAP_DAC_OVERRIDE, CAP_NET_ADMIN, RunAs, run_as
from veilgate.transport import loop as event_loop
from veilgate.transport.tcp import FramedConnection, Shaping, connect_tcp
from veilgate.transport.tls import connect_tls
from veilgate.transport.udp import UdpSender, enable_gro

log = logging.getLogger("veilgate.client")

UDP_BUFFER = 4 * 1024 * 1024
TOTALS = ("handshakes", "rx_bytes", "tx_bytes", "fallbacks_to_tcp", "returns_to_udp")


class Client(Driver):
    def __init__(self, config: ClientConfig, runtime: Runtime | None = None) -> None:
        super().__init__(runtime)
        self.config = config
        self.core = ClientProtocol(
            KeyPair.from_private_bytes(config.private_key),
            config.gateway_public_key,
            config.credential,
            keepalive_interval=config.keepalive,
            stall_timeout=config.stall_timeout,
            rekey_after=config.rekey_after,
            new_keypair=CompiledKeypair if self.compiled_wanted else Keypair,
            obfuscation=config.obfuscation,
        )
        self.paths = PathManager(
            mode=config.transport,
            streams=stream_carriers(config),
            udp_grace=config.udp_grace,
            reprobe_interval=config.reprobe_interval,
        )
        self.addresses: list[str] = self._resolve()
        """The gateway's addresses (its name resolved at start and when the network changes)."""
        self.gateway_ip = addresses.happy_eyeballs_order(self.addresses)[0]
        """The one in use (chosen at start, Happy Eyeballs order)."""
        self.state = SystemState(config.state_dir / f"client-{config.tun_name}.json", self.host)
        self.dns_state = config.state_dir / f"client-{config.tun_name}.dns"
        self.setup = TunnelSetup(self.state, self.dns_state, self.gateway_ip, config.apply_dns)
        self._underlay: tuple[str | None, str, tuple[str, ...]] | None = None
        self._stop_watching: Callable[[], None] | None = None
        self._settle: asyncio.TimerHandle | None = None
        self._resolving: asyncio.Task[None] | None = None
        self.udp: socket.socket | None = None
        self.udp_tx: UdpSender | None = None
        self._gro = False
        self.fast: fastpath.ClientPath | None = None
        """The compiled data path, when it runs (UDP sessions only)."""
        self._fast_keys: tuple[Keypair | None, tuple[Keypair, ...]] = (None, ())
        self._tun_wake = Wake()
        self._udp_wake = Wake()
        self.tcp: FramedConnection | None = None
        self._tcp_task: asyncio.Task[None] | None = None
        self.connected_at: float | None = None
        self.counters: Counter[str] = Counter()
        self._logged_switches = 0
        self.extra_status: dict[str, object] = {}

    @property
    def applied(self) -> TunnelConfig | None:
        """The tunnel configuration in force on the system."""
        return self.setup.applied

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.config
        self.begin()
        if SystemState.recover(self.state.path, self.dns_state, self.host):
            log.warning("restored routes, DNS and firewall left behind by a previous run")
        if cfg.kill_switch:
            table = f"veilgate_ks_{cfg.tun_name}"
            self.state.nft_table = table
            self.state.save()
            self._apply_kill_switch()
            log.info(
                "kill switch on: only traffic to the gateway%s leaves while the tunnel is down",
                " and the local network" if cfg.allow_lan else "",
            )
        if len(self.addresses) > 1 and cfg.transport not in STREAMS:
            self.gateway_ip = await addresses.pick_address(
                self.addresses, cfg.udp_port, cfg.gateway_public_key
            )
            self.setup.gateway_host = self.gateway_ip
        tun = self.open_tun(cfg.tun_name, 1420, vnet=self.compiled_wanted and cfg.tun_offload)
        self._underlay = self.host.underlay_route(self.gateway_ip, cfg.tun_name)
        if cfg.transport not in STREAMS:
            self.udp = udp = self._udp_socket()
            self.udp_tx = UdpSender(udp, gso=cfg.udp_offload)
            if self.compiled_wanted:
                fast = fastpath.ClientPath(tun.fd, udp.fileno(), cfg.udp_offload, self._gro, tun.vnet)
                if self.core.obfs is not None:
                    fast.protect(self.core.obfs.header_key)
                if self.watch_compiled(tun.fd, fast, fastpath.KIND_TUN):
                    self.watch_compiled(udp.fileno(), fast, fastpath.KIND_UDP)
                    self.fast = fast
        if self.fast is None:
            self.watch(tun.fd, self._on_tun_readable)
            if self.udp is not None:
                self.watch(self.udp.fileno(), self._on_udp_readable)
        log.info("data path: %s", self.data_path(self.fast is not None))
        self._stop_watching = self.host.watch_network(self._network_event)
        await self.serve_status(cfg.status_socket)
        await self.serve_metrics(cfg.metrics_listen)
        now = self.clock()
        self.core.connect(now)
        self._do(self.paths.start(now), now)
        self.after_io(now)
        log.info(
            "connecting to %s (udp %d, then %s; mode %s)",
            cfg.gateway_host,
            cfg.udp_port,
            ", ".join(f"{s} {cfg.tls_port if s == TLS else cfg.tcp_port}" for s in self.paths.streams)
            or "no stream carrier",
            cfg.transport,
        )

    def _resolve(self) -> list[str]:
        cfg = self.config
        found = addresses.resolve(cfg.gateway_host, cfg.udp_port)
        return found + [a for a in cfg.gateway_addresses if a not in found]

    def _udp_socket(self) -> socket.socket:
        """A UDP socket connected to the gateway: from the address the current routes choose."""
        family = socket.AF_INET6 if ipaddress.ip_address(self.gateway_ip).version == 6 else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_BUFFER)
            udp.setblocking(False)
            udp.connect((self.gateway_ip, self.config.udp_port))
            self._gro = self.config.udp_offload and enable_gro(udp)
        except OSError:
            udp.close()
            raise
        if self.config.obfuscation:
            # The flow's first datagram: an ICE connectivity check (docs/protocol.md 14.4).
            try:
                udp.send(covers.stun_binding_request(covers.cover_key(self.config.gateway_public_key)))
            except OSError as exc:
                log.debug("the udp cover datagram was not sent: %s", exc)
        return udp

    def _apply_kill_switch(self) -> None:
        cfg = self.config
        if self.state.nft_table is None:
            return
        allowed = [
            (a, proto, port)
            for a in self.addresses
            for proto, port in (("udp", cfg.udp_port), ("tcp", cfg.tls_port), ("tcp", cfg.tcp_port))
        ]
        lan = self.host.local_networks(cfg.tun_name) if cfg.allow_lan else []
        self.host.firewall(self.state.nft_table).apply(kill_switch_rules_for(cfg.tun_name, allowed, lan))

    # ------------------------------------------------------------ roaming

    NETWORK_SETTLE = 0.3
    """Seconds without a netlink message before a change counts: one move sends a burst of them."""

    def _network_event(self) -> None:
        if self._loop is None:
            return
        if self._settle is not None:
            self._settle.cancel()
        self._settle = self._loop.call_later(self.NETWORK_SETTLE, self.network_changed)

    def network_changed(self) -> None:
        """Links, addresses or routes changed and settled: if the way to the gateway outside the
        tunnel is another now (next hop, device or its addresses), follow it: the host route to the
        gateway, the kill switch's LAN, the UDP socket's source address, the TCP connection; the
        session stays. The gateway's name is resolved again in the background."""
        self._settle = None
        cfg = self.config
        try:
            route = self.host.underlay_route(self.gateway_ip, cfg.tun_name)
        except Exception as exc:
            log.warning("cannot read the routes: %s", exc)
            return
        if route == self._underlay:
            return
        self._underlay = route
        if route is None:
            log.info("no route to the gateway outside the tunnel; waiting for the network")
            return
        self.counters["network-changes"] += 1
        log.info("network changed (now by %s); following it, same session", route[1])
        self.setup.repin_gateway(route[0], route[1])
        if cfg.kill_switch:
            self._apply_kill_switch()
        self._rebind_udp()
        now = self.clock()
        self._do(self.paths.network_changed(now), now)
        self.after_io(now)
        if not addresses.is_literal(cfg.gateway_host) and (self._resolving is None or self._resolving.done()):
            self._resolving = asyncio.ensure_future(self._resolve_again())

    def _rebind_udp(self) -> None:
        """A new UDP socket connected from the current source address, put in place of the old one at
        the same descriptor number (the compiled data path keeps using that number)."""
        old = self.udp
        if old is None:
            return
        try:
            new = self._udp_socket()
        except OSError as exc:
            log.warning("cannot open a UDP socket on the new network: %s", exc)
            return
        fd = old.fileno()
        self.unwatch(fd)
        os.dup2(new.fileno(), fd)
        new.close()
        old.detach()
        self.udp = udp = socket.socket(fileno=fd)
        if self.udp_tx is not None:
            self.udp_tx.sock = udp
        if self.fast is not None:
            self.watch_compiled(fd, self.fast, fastpath.KIND_UDP)
        else:
            self.watch(fd, self._on_udp_readable)

    async def _resolve_again(self) -> None:
        """The gateway's name once more (through the tunnel's DNS once the tunnel is up); a changed
        answer updates the kill switch, and a new address is used when the current one went."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(None, self._resolve)
        except addresses.ResolveError as exc:
            log.info("%s; keeping its known addresses", exc)
            return
        if found == self.addresses:
            return
        self.addresses = found
        if cfg.kill_switch:
            self._apply_kill_switch()
        if self.gateway_ip not in found:
            self.gateway_ip = addresses.happy_eyeballs_order(found)[0]
            self.setup.gateway_host = self.gateway_ip
            self._underlay = None
            self.network_changed()

    async def stop(self) -> None:
        if self._stop_watching is not None:
            self._stop_watching()
        if self._settle is not None:
            self._settle.cancel()
        await self.close_metrics()
        bye = self.core.close(self.clock())
        if bye is not None:
            self._send(self.paths.current, bye)
        self.finish()
        if self._tcp_task is not None:
            self._tcp_task.cancel()
        if self.tcp is not None:
            self.tcp.close()
        if self.udp is not None:
            self.udp.close()
        self.state.undo(self.dns_state)
        log.info("disconnected; routes and DNS restored")

    def rotate_identity(self, key: KeyPair, credential: bytes) -> None:
        """Switch to a new static key and credential; the session, its addresses and TCP flows inside stay."""
        now = self.clock()
        self.core.rotate_identity(key, credential, now)
        self.after_io(now)

    # ------------------------------------------------------------ paths

    def _send(self, path: str, data: bytes) -> None:
        if path == UDP:
            if self.udp_tx is not None:
                self.udp_tx.send(data)
        elif self.tcp is not None and path == self.tcp.carrier:
            self.tcp.send(data)

    def _do(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if action.act is Act.SEND_HANDSHAKE:
                msg = self.core.handshake_message()
                if msg is not None:
                    self._send(action.path, msg)
            elif action.act is Act.OPEN_STREAM:
                if self._tcp_task is None or self._tcp_task.done():
                    self._tcp_task = asyncio.ensure_future(self._open_stream(action.path))
            elif action.act is Act.CLOSE_STREAM:
                if self.tcp is not None:
                    conn, self.tcp = self.tcp, None
                    conn.close()
            elif action.act is Act.PROBE_UDP:
                probe = self.core.send_probe(now)
                if probe is not None:
                    self.paths.probe_sent(probe[0], UDP)
                    self._send(UDP, probe[1])
            elif action.act is Act.SEND_KEEPALIVE:
                data = self.core.send_keepalive(now)
                if data is not None:
                    self._send(action.path, data)

    async def _open_stream(self, carrier: str) -> None:
        """Connect the stream carrier ``carrier`` (TLS or plain TCP) to the gateway."""
        cfg = self.config
        try:
            if carrier == TLS:
                conn = await connect_tls(
                    self.gateway_ip,
                    cfg.tls_port,
                    cfg.tls_name,
                    cfg.tls_pin,
                    cfg.gateway_public_key,
                    self._on_tcp_datagrams,
                    self._on_tcp_close,
                    timeout=5.0,
                )
            else:
                conn = await connect_tcp(
                    self.gateway_ip,
                    cfg.tcp_port,
                    self._on_tcp_datagrams,
                    self._on_tcp_close,
                    timeout=5.0,
                    stream_key=self.core.obfs.stream_key if self.core.obfs is not None else None,
                    cover_key=covers.cover_key(cfg.gateway_public_key) if cfg.obfuscation else None,
                    shaping=Shaping(cfg.tcp_shape_frames, cfg.tcp_shape_jitter),
                    host_name=cfg.gateway_host,
                )
        except (OSError, TimeoutError) as exc:
            log.info("%s connect to the gateway failed: %s", carrier, exc or "timed out")
            now = self.clock()
            self._do(self.paths.stream_failed(now, was_open=False), now)
            self.after_io(now)
            return
        if self.tcp is not None:  # a connection of an earlier attempt: this one replaces it
            old, self.tcp = self.tcp, None
            old.close()
        self.tcp = conn
        now = self.clock()
        self._do(self.paths.stream_connected(now), now)
        self.after_io(now)

    # ------------------------------------------------------------ input

    def _receive(self, path: str, data: bytes, now: float) -> None:
        before = self.core.authenticated_rx
        packet = self.core.receive_datagram(data, now)
        if self.core.authenticated_rx != before:
            self.paths.response_on(path, now)
        if packet is not None and self.tun is not None:
            try:
                write_tun(self.tun.fd, packet, self.tun.vnet)
            except OSError:
                self.counters["tun-write-error"] += 1

    def _on_udp_readable(self) -> None:
        if self.udp is None:
            return
        now = self.clock()
        receive = self._receive

        def one(data: bytes, addr: Any) -> None:
            receive(UDP, data, now)

        read_udp(self.udp, self._gro, self._udp_wake.quiet(now), one, self.counters)
        self.after_io(now)

    def _on_tcp_datagrams(self, datagrams: list[bytes], conn: FramedConnection) -> None:
        if conn is not self.tcp:
            return
        now = self.clock()
        receive = self._receive
        for data in datagrams:
            receive(conn.carrier, data, now)
        self.after_io(now)

    def _on_tcp_close(self, conn: FramedConnection) -> None:
        if conn is not self.tcp:
            return
        self.tcp = None
        now = self.clock()
        log.info("%s connection to the gateway closed", conn.carrier)
        self._do(self.paths.stream_failed(now), now)
        self.after_io(now)

    def _on_tun_readable(self) -> None:
        if self.tun is None:
            return
        now = self.clock()
        send_packet = self.core.send_packet
        # The sealed packets of one wake-up leave together: on UDP as GSO runs, on TCP in one write.
        tx: UdpSender | FramedConnection | None = self.udp_tx if self.paths.current == UDP else self.tcp

        def route(packet: bytes, now: float, at_once: bool) -> bool:
            data = send_packet(packet, now)
            if data is None or tx is None:  # no carrier open on this path: lost, as _send would
                return False
            if at_once:
                tx.send(data)
            else:
                tx.queue(data)
            return True

        read_tun(self.tun.fd, now, self._tun_wake.quiet(now), route, self.tun.vnet)
        if tx is not None:
            tx.flush()
        self.after_io(now)

    # ------------------------------------------------------------ the core's output

    def pump(self, now: float) -> None:
        self._process_events(now)
        for data in self.core.datagrams_to_send():
            if self.core.is_initiation(data):
                for action in self.paths.handshake_started(now):
                    self._send(action.path, data)
            else:
                self._send(self.paths.current, data)
        if self.fast is not None:
            self._update_fast_keys()

    def next_deadline(self) -> float | None:
        timers = [t for t in (self.core.get_timer(), self.paths.get_timer()) if t is not None]
        return min(timers) if timers else None

    def on_timer(self, now: float) -> None:
        self.core.handle_timer(now)
        self._do(self.paths.handle_timer(now), now)

    def _process_events(self, now: float) -> None:
        while (event := self.core.next_event()) is not None:
            if isinstance(event, ConfigReceived):
                assert self.tun is not None
                self.setup.apply(self.tun.name, event.config)
                if self.service is not None:
                    self.service.ready()  # the tunnel has its address and routes: it carries traffic
            elif isinstance(event, HandshakeCompleted):
                self.counters["handshakes"] += 1
                if not event.rekey:
                    self.connected_at = now
                log.debug("handshake completed (%s)", "rekey" if event.rekey else "first")
            elif isinstance(event, PathStalled):
                was = self.paths.active
                actions = self.paths.stalled(now, event.silent_for)
                if was != self.paths.active:
                    log.info(
                        "%s path stalled (nothing back for %.1f s); trying %s",
                        was,
                        event.silent_for,
                        self.paths.stream,
                    )
                self._do(actions, now)
            elif isinstance(event, ProbeAnswered):
                before = self.paths.active
                self._do(self.paths.probe_reply(event.probe_id, now), now)
                if before != self.paths.active:
                    log.info("udp works again; back on udp")
            elif isinstance(event, ConnectionLost):
                log.warning("connection lost; reconnecting")
            elif isinstance(event, HandshakeTimeout):
                log.warning("the gateway has not answered for 90 s; still trying")
        new = min(self.paths.switch_count - self._logged_switches, len(self.paths.switches))
        for sw in list(self.paths.switches)[len(self.paths.switches) - new :]:
            log.info("on %s (%s, %.2f s)", sw.new, sw.why, sw.took)
        self._logged_switches = self.paths.switch_count

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

    def after_compiled(self) -> None:
        """After the compiled loops ran: account for what they did, handle what they passed on."""
        fast = self.fast
        if fast is None:
            return
        pending, activity = fast.take()
        now = self.clock()
        if activity is not None:
            self.core.account(activity)
        for item in pending:
            if item.kind == fastpath.PENDING_TUN:
                data = self.core.send_packet(item.data, now)
                if data is not None:
                    self._send(self.paths.current, data)
            elif item.kind == fastpath.PENDING_DATAGRAM:
                self._receive(UDP, item.data, now)
            else:
                self.core.receive_opened(item.data)
        self.after_io(now)

    # ------------------------------------------------------------ reload and status

    def reload(self) -> None:
        """Read the configuration file again; only the log level changes at run time."""
        self.config = reload_client_config(self.config, {"log_level"})

    def summary(self) -> str:
        """One line for the service manager: the state of the tunnel, no address."""
        if not self.core.connected or self.applied is None:
            return "connecting"
        return (
            f"connected over {self.paths.active}, {self.core.rx_bytes} B in, {self.core.tx_bytes} B out, "
            f"{self.paths.switch_count} path switches"
        )

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
            "totals": self.totals(),
            "counters": total(self.core.counters, self.counters, self._udp_counters()),
        } | self.extra_status

    def totals(self) -> dict[str, int]:
        """Figures that only grow: handshakes, bytes, and the moves between UDP and a stream carrier
        (TLS or plain TCP: ``fallbacks_to_tcp`` counts both)."""
        return {
            "handshakes": self.counters["handshakes"],
            "rx_bytes": self.core.rx_bytes,
            "tx_bytes": self.core.tx_bytes,
            "fallbacks_to_tcp": self.paths.fallbacks,
            "returns_to_udp": self.paths.returns,
        }

    def metrics(self) -> Iterable[Metric]:
        return client_metrics(self, self.totals(), {})

    def _udp_counters(self) -> dict[str, int]:
        tx = self.udp_tx
        if tx is None:
            return {}
        counters = {
            "udp-send-dropped": tx.dropped,
            "udp-datagrams-out": tx.datagrams,
            "udp-sends": tx.syscalls,
        }
        return total(counters, self.fast.counters()) if self.fast is not None else counters


def stream_carriers(config: ClientConfig) -> tuple[str, ...]:
    """The stream carriers ``auto`` falls back to, in order: TLS where the gateway's TLS name and pin
    are known, then plain TCP where ``plain_tcp`` allows it."""
    return ((TLS,) if config.tls_pin else ()) + ((TCP,) if config.plain_tcp else ())


def client_metrics(
    client: Client | None, totals: Mapping[str, int], extra: Mapping[str, tuple[str, int]]
) -> list[Metric]:
    """The client's figures for Prometheus: ``totals`` (``Client.totals``, summed over the
    connections of a provider-mode client), the live ``client``'s state, and ``extra`` counters."""
    transport = client.paths.active if client is not None else None
    counters = total(client.core.counters, client.counters, client._udp_counters()) if client else {}
    drops, _, _ = split_counters(counters)
    rows: list[tuple[str, str, str, Value] | tuple[str, str, str, Value, str]] = [
        ("gauge", "connected", "1: a session with the gateway is up", bool(client and client.core.connected)),
        (
            "gauge",
            "transport",
            "1 for the transport in use",
            {UDP: transport == UDP, TLS: transport == TLS, TCP: transport == TCP},
            "transport",
        ),
        ("gauge", "data_path_compiled", "1: the compiled data path runs", bool(client and client.fast)),
        (
            "counter",
            "fallbacks_to_tcp",
            "Moves to TLS or TCP because UDP did not answer",
            totals["fallbacks_to_tcp"],
        ),
        ("counter", "returns_to_udp", "Moves back to UDP once it answered again", totals["returns_to_udp"]),
        ("counter", "handshakes", "Handshakes completed (first and rekeys)", totals["handshakes"]),
        (
            "counter",
            "bytes",
            "IP bytes through the tunnel (in: from the gateway)",
            {"in": totals["rx_bytes"], "out": totals["tx_bytes"]},
            "direction",
        ),
        ("counter", "dropped", "Datagrams and packets dropped", drops, "reason"),
    ]
    rows += [("counter", name, doc, value) for name, (doc, value) in extra.items()]
    return families("veilgate_client_", rows)


def reload_client_config(config: ClientConfig, live: set[str]) -> ClientConfig:
    """``config`` with the fields in ``live`` taken from its file again (unchanged if the file is bad)."""
    if config.source is None:
        return config
    try:
        new = load_client_config(config.source, (config.private_key, config.credential))
    except ConfigError as exc:
        log.error("reload refused, the running configuration stays: %s", exc)
        return config
    if bool(new.provider_url) != bool(config.provider_url):
        log.warning("provider_url changed: restart to apply (veilgate client keeps the running value)")
        return config
    skip = {
        "gateway_host",
        "gateway_public_key",
        "private_key",
        "credential",
        "udp_port",
        "tcp_port",
        "tls_port",
        "tls_name",
        "tls_pin",
        "plain_tcp",
    }
    if config.provider_url:  # the supervisor fills these in for each gateway: not the file's
        new = dataclasses.replace(new, **{k: getattr(config, k) for k in skip})
    changes = changed_fields(config, new, live, "client")
    if "log_level" in changes:
        set_log_level(new.log_level)
    log.info("configuration reloaded%s", ": " + ", ".join(sorted(changes)) if changes else ", no change")
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def client_run_as(config: ClientConfig) -> RunAs | None:
    """Whom the client drops to, and why it keeps what it keeps.

    After start the client still adds and deletes routes and addresses, applies and removes its kill
    switch (nft) and, at exit, undoes all of it: CAP_NET_ADMIN. With ``apply_dns`` it rewrites the
    root-owned /etc/resolv.conf in place when the tunnel comes up and restores it at exit:
    CAP_DAC_OVERRIDE (a unit's ProtectSystem=strict leaves only that file and its own folders
    writable). Its state folder and its status socket's folder are handed to its user.
    """
    keep = {CAP_NET_ADMIN} | ({CAP_DAC_OVERRIDE} if config.apply_dns else set())
    cache = (config.state_dir / "provider",) if config.provider_url else ()
    own = (config.state_dir, *cache, config.status_socket.parent)
    return run_as(config.user, keep, own, source=config.source, field="client.user")


def run_client(config: ClientConfig) -> int:
    user = client_run_as(config)
    try:
        client = Client(config)
    except addresses.ResolveError as exc:
        log.error("%s (client.gateway_host)", exc)
        return 1
    client.service = Service("client", user, client.reload, client.summary, ready_at_start=False)
    event_loop.run(client.run())
    return 0
