"""The gateway daemon: the driver around ``GatewayProtocol``, a TUN device, UDP and TCP.

Thin by design: all protocol decisions are in ``veilgate.protocol``. This module moves bytes
between the sockets (``listeners``), the TUN device and the core, gives each new session its
tunnel addresses (``sessions``), keeps the issuer's epoch keys current (``epochs``), and answers
status queries with aggregate figures only. Where the compiled data path runs, it serves sessions
reached over UDP and this module sees only what it passes on (``compiled``).

Privacy: at the default log level nothing is logged that links a key, a credential or a source
address to a tunnel address, and nothing about clients is written to disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any, cast

from prometheus_client.core import CounterMetricFamily

from veilgate import fastpath
from veilgate.config import ConfigError
from veilgate.credentials import CredentialVerifier, IssuerPublicKey
from veilgate.credentials.epochs import DEFAULT_EPOCH_LENGTH, AnyCredentialVerifier, EpochVerifier
from veilgate.driver import Driver, Runtime, Wake, read_tun, read_udp, total, write_tun
from veilgate.driver.host import Tun
from veilgate.fastpath.keypair import CompiledKeypair
from veilgate.gateway.compiled import CompiledGateway
from veilgate.gateway.config import GatewayConfig, load_gateway_config
from veilgate.gateway.epochs import EpochSync
from veilgate.gateway.listeners import Endpoint, Listeners, UdpSocket
from veilgate.gateway.machine import Machine
from veilgate.gateway.pool import AddressPool, PoolExhausted
from veilgate.gateway.relay import Relay
from veilgate.gateway.sessions import SessionTable
from veilgate.gateway.shard import SINGLE
from veilgate.gateway.worker import WorkerLink, WorkerPlace, worker_status_socket
from veilgate.gateway.workers import Supervisor, worker_count
from veilgate.monitor.metrics import Metric, families, split_counters
from veilgate.protocol import ip
from veilgate.protocol.control import TunnelConfig
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.events import (
    HandshakeElsewhere,
    HandshakeRefused,
    SessionEnded,
    SessionEstablished,
    SessionRekeyed,
)
from veilgate.protocol.gateway import GatewayProtocol, Session
from veilgate.protocol.keypair import Keypair
from veilgate.provider.client import ProviderClient
from veilgate.systemd.notify import Service, changed_fields, set_log_level
from veilgate.systemd.privileges import CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, run_as
from veilgate.transport import loop as event_loop
from veilgate.transport.tcp import FramedConnection
from veilgate.tun import TunDevice

log = logging.getLogger("veilgate.gateway")


class Gateway(Driver):
    def __init__(
        self, config: GatewayConfig, runtime: Runtime | None = None, place: WorkerPlace | None = None
    ) -> None:
        """``place``: this gateway is one worker of several (``veilgate.gateway.workers``), on the
        descriptors its supervisor opened; None: the only one, opening its own."""
        super().__init__(runtime)
        self.config = config
        self.place = place
        shard = place.shard if place is not None else SINGLE
        self.link: WorkerLink | None = None
        """With several workers: what goes to the others, and what comes from them."""
        ed25519 = CredentialVerifier(
            [IssuerPublicKey.from_bytes(k) for k in config.issuer_public_keys], max_skew=config.max_skew
        )
        self.issuers = ed25519
        self.epochs = EpochVerifier([], DEFAULT_EPOCH_LENGTH, max_skew=config.max_skew)
        self.core = GatewayProtocol(
            KeyPair.from_private_bytes(config.private_key),
            _WallClockCheck(AnyCredentialVerifier(ed25519, self.epochs)),
            max_sessions_per_credential=config.max_sessions_per_credential,
            under_load_rate=config.cookie_threshold,
            new_keypair=CompiledKeypair if self.compiled_wanted else Keypair,
            obfuscation=config.obfuscation,
            random_index=self._draw_index if shard.n > 1 else shard.random_index,
        )
        self.counters: Counter[str] = Counter()
        self.provider = (
            ProviderClient(config.provider_url, config.provider_fingerprint or "")
            if config.provider_url
            else None
        )
        self.epoch_sync = (
            EpochSync(self.provider, self.epochs, self.counters, self._push_epoch_keys)
            if self.provider is not None
            else None
        )
        self.pool4 = AddressPool(config.pool_v4, shard=shard)
        self.pool6 = AddressPool(config.pool_v6, shard=shard) if config.pool_v6 is not None else None
        self.table = SessionTable(self.pool4, self.pool6)
        self.core.changed = set()  # the table follows every change of keys, endpoint or addresses
        self.listeners = Listeners(
            config,
            self._on_tcp_datagrams,
            KeyPair.from_private_bytes(config.private_key).public,
            self.core.obfs.stream_key if self.core.obfs is not None else None,
            self.counters,
            place,
        )
        self.fast: CompiledGateway | None = None
        """The compiled data path, when it runs: it serves the sessions reached over UDP."""
        self.machine = Machine(self.host, config)
        """What the gateway changes on the machine (not a worker's: its supervisor's)."""
        self._tun_wake = Wake()
        self._udp_wake = Wake()
        self._refresh: asyncio.Future[bool] | None = None

    # ------------------------------------------------------------ lifecycle

    def _draw_index(self) -> int:
        """A receiver index for a new handshake of this worker, not one lent to another worker."""
        assert self.place is not None
        while True:
            index = self.place.shard.random_index()
            if self.link is None or self.link.may_draw(index):
                return index

    async def start(self) -> None:
        if self.place is not None:
            await self._start_worker(self.place)
            return
        cfg = self.config
        self.begin()
        machine = self.machine
        uplink = machine.uplink()
        tun = self.open_tun(cfg.tun_name, cfg.mtu, vnet=self.compiled_wanted and cfg.tun_offload)
        machine.setup_tun(tun.name)
        await self._serve(tun)
        machine.apply_firewall(tun.name, uplink)
        if self.epoch_sync is not None:
            await self.epoch_sync.start()
        await self.serve_status(cfg.status_socket)
        await self.serve_metrics(cfg.metrics_listen)
        machine.log_up(tun.name, uplink)

    async def _start_worker(self, place: WorkerPlace) -> None:
        """One worker of several: the supervisor set up the machine and opened the descriptors."""
        cfg = self.config
        self.begin()
        os.set_blocking(place.tun_fd, False)
        self.tun = TunDevice(place.tun_fd, cfg.tun_name, place.vnet)
        relay = Relay(place.shard, cfg.tun_name, self.counters)
        self.link = link = WorkerLink(self, place.shard, relay, self.core.obfs)
        self.core.elsewhere = link.elsewhere
        self.listeners.on_closed = link.closed
        await self._serve(self.tun)
        self.watch(relay.sock.fileno(), link.on_readable)
        if self.epoch_sync is not None:
            await self.epoch_sync.start()
        path = worker_status_socket(cfg.status_socket, place.shard.k)
        await self.serve_status(path)
        user = self.service.run_as if self.service is not None else None
        if user is not None:  # the supervisor asks after dropping to that user
            os.chown(path, user.uid, user.gid)

    async def _serve(self, tun: Tun) -> None:
        """Serve the TUN device and the sockets: the compiled data path where it runs."""
        cfg = self.config
        if self.compiled_wanted:
            fast = CompiledGateway(
                tun.fd, self.table, self.listeners, self.core, cfg.client_to_client, tun.vnet
            )
            if self.watch_compiled(tun.fd, fast.path, fastpath.KIND_TUN):
                self.fast = fast
        if self.fast is None:
            self.watch(tun.fd, self._on_tun_readable)
        log.info("data path: %s", self.data_path(self.fast is not None))
        await self.listeners.open()
        for udp in self.listeners.udp:
            if self.fast is not None:
                udp.number = self.fast.path.add_socket(udp.sock.fileno(), cfg.udp_offload, udp.gro)
                self.watch_compiled(udp.sock.fileno(), self.fast.path, fastpath.KIND_UDP, udp.number)
            else:
                self.watch(udp.sock.fileno(), self._on_udp_readable, udp)

    @property
    def dns(self) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
        return self.machine.dns

    async def stop(self) -> None:
        await self.close_metrics()
        if self.epoch_sync is not None:
            self.epoch_sync.stop()
        self.finish()
        self.listeners.close()
        self.machine.remove_firewall()
        for session_id in list(self.core.sessions):
            self.core.end_session(session_id, "gateway stopping")
        self._process_events()
        log.info("gateway stopped")

    def _push_epoch_keys(self) -> None:
        """Send live sessions the epoch keys now accepted (same addresses, a new CONFIG)."""
        now = self.clock()
        keys = self.epochs.epoch_keys()
        pushed = 0
        for session_id, session in list(self.core.sessions.items()):
            if session.config is not None and session.config.epoch_keys != keys:
                self.core.assign(session_id, dataclasses.replace(session.config, epoch_keys=keys), now)
                pushed += 1
        if pushed:
            self.after_io(now)

    # ------------------------------------------------------------ input

    def _on_udp_readable(self, udp: UdpSocket) -> None:
        now = self.clock()
        endpoint = self.listeners.udp_endpoint
        receive = self.receive
        deliver = self.deliver

        def one(data: bytes, addr: Any) -> None:
            packet = receive(data, endpoint(addr, udp), now)
            if packet is not None:
                deliver(packet)

        read_udp(udp.sock, udp.gro, self._udp_wake.quiet(now), one, self.counters)
        self.after_io(now)

    def _on_tcp_datagrams(self, datagrams: list[bytes], conn: FramedConnection) -> None:
        now = self.clock()
        endpoint = self.listeners.tcp_endpoint(conn)
        if endpoint is None:
            self.counters["tcp-too-many"] += 1
            return
        receive = self.receive
        for data in datagrams:
            if conn.closed:  # e.g. the session on it ended
                break
            packet = receive(data, endpoint, now)
            if packet is not None:
                self.deliver(packet)
        self.after_io(now)

    def receive(self, data: bytes, endpoint: Endpoint, now: float) -> bytes | None:
        """A datagram from a client, for the core, or for the worker that owns its session."""
        link = self.link
        if link is not None:
            owner = link.owner_of(data)
            if owner is not None:
                link.pass_on(owner, data, endpoint)
                return None
        return self.core.receive_datagram(data, endpoint, now)

    def receive_here(self, data: bytes, endpoint: object, now: float) -> None:
        """A datagram another worker passed here: for this worker's core, whatever it holds."""
        packet = self.core.receive_datagram(data, endpoint, now)  # type: ignore[arg-type]
        if packet is not None:
            self.deliver(packet)

    def deliver(self, packet: bytes) -> None:
        """Write a packet from a client to the TUN (not to another client unless allowed)."""
        if not self.config.client_to_client and ip.destination(packet) in self.table.routes:
            self.counters["client-to-client-dropped"] += 1
            return
        if self.tun is None:
            return
        try:
            write_tun(self.tun.fd, packet, self.tun.vnet)
        except OSError as exc:
            self.counters["tun-write-error"] += 1
            log.debug("tun write failed: %s", exc.strerror)

    def _on_tun_readable(self) -> None:
        if self.tun is None:
            return
        now = self.clock()
        read_tun(self.tun.fd, now, self._tun_wake.quiet(now), self.route, self.tun.vnet)
        self.listeners.flush()
        self.after_io(now)

    def route(self, packet: bytes, now: float, at_once: bool) -> bool:
        """Seal a packet from the TUN for the session its destination belongs to; True if it left.

        ``at_once``: send it now; otherwise it waits in its endpoint's queue for the next flush."""
        peer = self.table.routes.get(ip.destination(packet))
        session = peer.owner if peer is not None else None
        if not isinstance(session, Session):
            if self.link is None or not self.link.pass_packet(packet):
                self.counters["tun-no-route"] += 1
            return False
        out = self.core.send_packet(session, packet, now)
        if out is None:
            return False
        endpoint: Endpoint = out[1]  # type: ignore[assignment]
        if at_once:
            endpoint.send(out[0])
        else:
            endpoint.queue(out[0])
        return True

    def after_compiled(self) -> None:
        if self.fast is not None:
            now = self.clock()
            self.fast.take(self, now)
            self.after_io(now)

    # ------------------------------------------------------------ the core's output

    def pump(self, now: float) -> None:
        self._send_queued()
        if self._process_events():
            self._send_queued()
        changed = self.core.changed
        if changed:
            sessions = self.core.sessions
            link = self.link
            for session in changed:
                alive = session.id in sessions
                self.table.follow(session, alive)
                if link is not None:
                    if alive:
                        link.announce(session.id, session.resume_token, frozenset(session.credential_keys))
                    else:
                        link.announce(session.id, None, frozenset())
            changed.clear()

    def _send_queued(self) -> None:
        for data, endpoint in self.core.datagrams_to_send():
            endpoint.send(data)  # type: ignore[attr-defined]

    def next_deadline(self) -> float | None:
        return self.core.get_timer()

    def on_timer(self, now: float) -> None:
        self.core.handle_timer(now)

    def _process_events(self) -> bool:
        """Handle the core's events; True if there were any."""
        event = self.core.next_event()
        if event is None:
            return False
        now = self.clock()
        while event is not None:
            if isinstance(event, SessionEstablished):
                self._assign(event.session_id, now)
            elif isinstance(event, SessionEnded):
                self.table.close(event.session_id)
                self.listeners.forget()  # no client address outlives its session here
                self.counters["sessions-ended"] += 1
                log.info("session ended (%s); %d active", event.reason, len(self.core.sessions))
            elif isinstance(event, SessionRekeyed):
                self.counters["rekeys"] += 1
                if event.identity_rotated:
                    self.counters["identity-rotations"] += 1
                    log.debug("session %d rotated its identity", event.session_id)
            elif isinstance(event, HandshakeElsewhere):
                if self.link is not None:
                    self.link.hand_off(event.handoff, event.endpoint)
            elif isinstance(event, HandshakeRefused):  # the core counted it
                log.warning("handshake refused: credential %s", event.reason)
            event = self.core.next_event()
        return True

    def _assign(self, session_id: int, now: float) -> None:
        cfg = self.config
        session = self.core.sessions[session_id]
        try:
            v4, v6 = self.table.open(session)
        except PoolExhausted:
            log.error("address pool exhausted; refusing a session")
            self.counters["refused-pool-exhausted"] += 1
            self.core.end_session(session_id, "pool exhausted")
            return
        tunnel = TunnelConfig(  # interfaces from (int, prefix): a fifth of the cost of parsing "a/p"
            ipv4=ipaddress.IPv4Interface((int(v4), cfg.pool_v4.prefixlen)),
            ipv6=ipaddress.IPv6Interface((int(v6), cfg.pool_v6.prefixlen))
            if v6 is not None and cfg.pool_v6 is not None
            else None,
            dns=self.dns,
            routes=tuple(cfg.routes),
            mtu=cfg.mtu,
            lease=cfg.lease,
            keepalive=10,
            epoch_keys=self.epochs.epoch_keys(),
        )
        self.core.assign(session_id, tunnel, now)
        self.counters["sessions-established"] += 1
        log.info("session established; %d active", len(self.core.sessions))
        index = session.current.local_index if session.current is not None else None
        log.debug("session %d (receiver index %s) assigned its addresses", session_id, index)

    # ------------------------------------------------------------ reload

    RELOADABLE = frozenset({"issuer_public_keys", "max_skew", "log_level", "dns", "routes", "lease"})
    """What a reload applies to the running gateway (DNS, routes and lease: to sessions made after)."""

    def reload(self) -> None:
        """Read the configuration file again and apply what can change without dropping a session;
        fetch the epoch keys from the provider again. A bad file changes nothing."""
        if self.config.source is None:
            return
        try:
            new = load_gateway_config(self.config.source, self.config.private_key)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return
        changes = changed_fields(self.config, new, set(self.RELOADABLE), "gateway")
        if "issuer_public_keys" in changes:
            keys = [IssuerPublicKey.from_bytes(k) for k in new.issuer_public_keys]
            for key_id in set(self.issuers.key_ids) - {k.key_id for k in keys}:
                self.issuers.remove(key_id)
            for key in keys:
                self.issuers.add(key)
        if "max_skew" in changes:
            self.issuers.max_skew = self.epochs.max_skew = new.max_skew
        if "log_level" in changes:
            set_log_level(new.log_level)
        self.config = dataclasses.replace(self.config, **changes)  # type: ignore[arg-type]
        log.info("configuration reloaded%s", ": " + ", ".join(sorted(changes)) if changes else ", no change")
        if self.epoch_sync is not None:
            self._refresh = asyncio.ensure_future(self.epoch_sync.refresh())

    # ------------------------------------------------------------ status

    def summary(self) -> str:
        """One line of aggregate figures for the service manager (no address, no key)."""
        counters = total(self.core.counters, self.counters)
        refused = sum(v for k, v in counters.items() if k.startswith("refused-"))
        return (
            f"{len(self.core.sessions)} sessions, {self.core.pending_handshakes} handshakes pending, "
            f"{counters.get('sessions-established', 0)} established, {refused} refused"
        )

    def status(self) -> dict[str, object]:
        """Aggregate figures only: no keys, no addresses, nothing per session. The totals count
        every session since the start and never go down."""
        now = self.clock()
        fast = self.fast.path.counters() if self.fast is not None else {}
        udp = self.listeners.udp_figures(fast)
        for key in ("udp-datagrams-out", "udp-sends", "udp-send-dropped", "udp-gso-refused"):
            fast.pop(key, None)
        counters = total(self.core.counters, self.counters, fast)
        traffic = self.table.traffic()
        pools = {"v4": self.pool4} | ({"v6": self.pool6} if self.pool6 is not None else {})
        return {
            "role": "gateway",
            "uptime": round(time.time() - self.started, 1),
            "data_path": "compiled" if self.fast is not None else "python",
            "sessions": len(self.core.sessions),
            "sessions_by_transport": self.sessions_by_transport(),
            "pending_handshakes": self.core.pending_handshakes,
            "under_load": self.core.under_load(now),
            "tcp_connections": len(self.listeners.tcp),
            "pool_v4_in_use": self.pool4.in_use,
            "pools": {name: {"size": p.size, "in_use": p.in_use} for name, p in pools.items()},
            "totals": {
                "sessions_opened": counters.get("sessions-established", 0),
                "sessions_ended": counters.get("sessions-ended", 0),
                "handshakes": counters.get("handshakes", 0),
                "transport_moves": sum(self.table.moves.values()),
            }
            | traffic,
            "rx_bytes": traffic["rx_bytes"],
            "tx_bytes": traffic["tx_bytes"],
            "counters": counters,
            "udp": udp,
            "moves": {f"{old}->{new}": n for (old, new), n in sorted(self.table.moves.items())},
        }

    def sessions_by_transport(self) -> dict[str, int]:
        return dict(Counter(getattr(s.endpoint, "transport", "?") for s in self.core.sessions.values()))

    def metrics(self) -> Iterable[Metric]:
        """The status's figures for Prometheus: the same counters, read at each scrape."""
        return gateway_metrics(self.status())


def gateway_metrics(status: dict[str, Any]) -> Iterable[Metric]:
    """A gateway's status (one process's, or its workers' summed) as Prometheus metrics."""
    totals = cast(dict[str, int], status["totals"])
    counters = cast(dict[str, int], status["counters"])
    udp = cast(dict[str, int], status["udp"])
    pools = cast(dict[str, dict[str, int]], status["pools"])
    drops, refused, events = split_counters(counters)
    drops["udp-send"] = udp["dropped"]
    for name in ("handshakes", "sessions-established", "sessions-ended", "cookie-sent"):
        events.pop(name, None)
    moves = CounterMetricFamily(
        "veilgate_gateway_session_transport_moves",
        "Sessions that moved from one transport to the other",
        labels=["from", "to"],
    )
    for pair, n in sorted(cast(dict[str, int], status["moves"]).items()):
        old, _, new = pair.partition("->")
        moves.add_metric([old, new], n)
    yield moves
    yield from families(
        "veilgate_gateway_",
        [
            (
                "gauge",
                "data_path_compiled",
                "1: the compiled data path runs; 0: pure Python",
                status["data_path"] == "compiled",
            ),
            (
                "gauge",
                "sessions",
                "Live sessions",
                {"udp": 0, "tls": 0, "tcp": 0} | cast(dict[str, int], status["sessions_by_transport"]),
                "transport",
            ),
            ("counter", "sessions_opened", "Sessions opened", totals["sessions_opened"]),
            ("counter", "sessions_ended", "Sessions ended", totals["sessions_ended"]),
            (
                "gauge",
                "pending_handshakes",
                "Handshakes awaiting the final message",
                cast(int, status["pending_handshakes"]),
            ),
            (
                "counter",
                "handshakes",
                "Handshakes completed (sessions, rekeys, rotations)",
                totals["handshakes"],
            ),
            ("counter", "handshakes_refused", "Handshakes refused", refused, "reason"),
            (
                "gauge",
                "under_load",
                "1: initiations are answered with cookies",
                bool(status["under_load"]),
            ),
            (
                "counter",
                "cookie_replies",
                "Cookie replies sent under load",
                counters.get("cookie-sent", 0),
            ),
            (
                "gauge",
                "pool_addresses",
                "Tunnel addresses a pool holds",
                {k: v["size"] for k, v in pools.items()},
                "family",
            ),
            (
                "gauge",
                "pool_addresses_in_use",
                "Tunnel addresses in use",
                {k: v["in_use"] for k, v in pools.items()},
                "family",
            ),
            (
                "counter",
                "bytes",
                "IP bytes (in: from clients)",
                {"in": totals["rx_bytes"], "out": totals["tx_bytes"]},
                "direction",
            ),
            (
                "counter",
                "packets",
                "IP packets (in: from clients)",
                {"in": totals["rx_packets"], "out": totals["tx_packets"]},
                "direction",
            ),
            ("counter", "dropped", "Datagrams and packets dropped", drops, "reason"),
            ("counter", "events", "Other events counted", events, "event"),
            (
                "gauge",
                "tcp_connections",
                "Open TCP connections from clients",
                cast(int, status["tcp_connections"]),
            ),
            ("counter", "udp_datagrams_out", "UDP datagrams sent", udp["datagrams_out"]),
            ("counter", "udp_sends", "UDP send calls (fewer than datagrams with GSO)", udp["sends"]),
        ],
    )


class _WallClockCheck:
    """Credentials carry wall-clock validity windows; the core's ``now`` is monotonic.

    This adapter gives the verifier the wall clock, the one place a daemon reads it.
    """

    def __init__(self, verifier: AnyCredentialVerifier) -> None:
        self.verifier = verifier

    def verify(self, data: bytes, static_public: bytes, now: float) -> object:
        return self.verifier.verify(data, static_public, time.time())


def run_gateway(config: GatewayConfig) -> int:
    # After start the gateway still changes the network (nftables at exit, addresses and routes on
    # its TUN device): CAP_NET_ADMIN. Its sockets are bound by then; CAP_NET_BIND_SERVICE stays only
    # for a port below 1024 (a socket reopened there). It writes no file but its status socket.
    keep = {CAP_NET_ADMIN} | (
        {CAP_NET_BIND_SERVICE}
        if min(config.udp_port, config.tcp_port or 65535, config.tls_port if config.tls_cert_file else 65535)
        < 1024
        else set()
    )
    user = run_as(
        config.user, keep, (config.status_socket.parent,), source=config.source, field="gateway.user"
    )
    n = worker_count(config)
    if n > 1 and config.source is not None:
        supervisor = Supervisor(config, n)
        supervisor.service = Service("gateway", user, supervisor.reload, supervisor.summary)
        event_loop.run(supervisor.run())
        return 0
    gateway = Gateway(config)
    gateway.service = Service("gateway", user, gateway.reload, gateway.summary)
    event_loop.run(gateway.run())
    return 0


__all__ = ["Gateway", "run_gateway"]
