"""The gateway daemon: asyncio around ``GatewayProtocol``, a TUN device, UDP and TCP.

Thin by design: all protocol decisions are in ``veilgate.protocol``. This
module moves bytes between the sockets, the TUN device and the core, assigns
tunnel addresses from in-memory pools when the core reports a new session, and
answers status queries with aggregate figures only.

Privacy: at the default log level nothing is logged that links a key, a
credential or a source address to a tunnel address, and nothing about clients
is written to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import json
import logging
import os
import signal
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from veilgate import fastpath
from veilgate.credentials import CredentialVerifier, IssuerPublicKey
from veilgate.credentials.epochs import DEFAULT_EPOCH_LENGTH, AnyCredentialVerifier, EpochVerifier
from veilgate.fastpath.keypair import CompiledKeypair
from veilgate.gateway.config import GatewayConfig
from veilgate.gateway.pool import AddressPool, PoolExhausted
from veilgate.netfilter import NftTable, gateway_isolation_rules, gateway_nat_rules
from veilgate.protocol import ip
from veilgate.protocol.activity import ActivityRecord
from veilgate.protocol.constants import REJECT_AFTER_TIME
from veilgate.protocol.control import TunnelConfig
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.events import HandshakeRefused, SessionEnded, SessionEstablished, SessionRekeyed
from veilgate.protocol.gateway import GatewayProtocol, Session
from veilgate.protocol.keypair import Keypair
from veilgate.provider.client import ProviderClient, ProviderInconsistent, ProviderUnavailable
from veilgate.transport import loop as event_loop
from veilgate.transport.loop import QUIET_GAP, add_compiled_reader, add_data_reader, remove_data_reader
from veilgate.transport.tcp import FramedConnection, serve_tcp
from veilgate.transport.udp import UdpSender, enable_gro, recv_coalesced, split
from veilgate.tun import TunDevice, netlink

log = logging.getLogger("veilgate.gateway")

TUN_BATCH = 256
UDP_BATCH = 256
UDP_BUFFER = 4 * 1024 * 1024


class UdpEndpoint:
    """A client's UDP address (and the socket that reaches it); equal when host and port are equal."""

    __slots__ = ("addr", "tx")
    transport = "udp"

    def __init__(self, addr: tuple[Any, ...], tx: UdpSender) -> None:
        self.addr = addr[:2]
        self.tx = tx

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UdpEndpoint) and other.addr == self.addr

    def __hash__(self) -> int:
        return hash(self.addr)

    def cookie_bytes(self) -> bytes:
        return _address_bytes(self.addr)

    def send(self, data: bytes) -> None:
        self.tx.send(data, self.addr)

    def queue(self, data: bytes) -> None:
        """Send with the next flush of the socket's sender, where runs to one client share a GSO send."""
        self.tx.queue(data, self.addr)


class TcpEndpoint:
    """A client's TCP connection; equal only to itself."""

    __slots__ = ("conn", "flush_list")
    transport = "tcp"

    def __init__(self, conn: FramedConnection, flush_list: list[FramedConnection]) -> None:
        self.conn = conn
        self.flush_list = flush_list

    def cookie_bytes(self) -> bytes:
        return _address_bytes(self.conn.peer)

    def send(self, data: bytes) -> None:
        self.conn.send(data)

    def queue(self, data: bytes) -> None:
        """Send with the gateway's next flush, in one write with the frames queued before it."""
        if self.conn.queue(data):
            self.flush_list.append(self.conn)


Endpoint = UdpEndpoint | TcpEndpoint


def _address_bytes(addr: tuple[Any, ...]) -> bytes:
    """The packed IP address and the port (big-endian) of a socket address: what cookies bind to.

    On every handshake initiation, also under a flood, so ``inet_pton`` rather than ``ipaddress``.
    """
    host, port = str(addr[0]), int(addr[1])
    if ":" in host:
        return socket.inet_pton(socket.AF_INET6, host.partition("%")[0]) + port.to_bytes(2, "big")
    return socket.inet_pton(socket.AF_INET, host) + port.to_bytes(2, "big")


class Gateway:
    def __init__(self, config: GatewayConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        ed25519 = CredentialVerifier(
            [IssuerPublicKey.from_bytes(k) for k in config.issuer_public_keys], max_skew=config.max_skew
        )
        self.epochs = EpochVerifier([], DEFAULT_EPOCH_LENGTH, max_skew=config.max_skew)
        verifier = AnyCredentialVerifier(ed25519, self.epochs)
        # The compiled data path, if wanted, runs only with the clock it reads (CLOCK_MONOTONIC).
        self.fast_wanted = fastpath.wanted(os.environ) and clock is time.monotonic
        self.core = GatewayProtocol(
            KeyPair.from_private_bytes(config.private_key),
            _WallClockCheck(verifier),
            max_sessions_per_credential=config.max_sessions_per_credential,
            new_keypair=CompiledKeypair if self.fast_wanted else Keypair,
        )
        self.provider = (
            ProviderClient(config.provider_url, config.provider_fingerprint or "")
            if config.provider_url
            else None
        )
        self._provider_task: asyncio.Task[None] | None = None
        self.pool4 = AddressPool(config.pool_v4)
        self.pool6 = AddressPool(config.pool_v6) if config.pool_v6 is not None else None
        self.routes: dict[bytes, Session] = {}
        self.counters: Counter[str] = Counter()
        self.started = time.time()
        self.tun: TunDevice | None = None
        self.udp_socks: list[socket.socket] = []
        self.udp_tx: dict[socket.socket, UdpSender] = {}
        self._gro: set[socket.socket] = set()
        self._tun_wake = self._udp_wake = -1.0
        self._udp_memo: tuple[Any, UdpEndpoint] | None = None
        self._tcp_to_flush: list[FramedConnection] = []
        self.fast: fastpath.GatewayPath | None = None
        """The compiled data path, when built and enabled: it serves sessions reached over UDP."""
        self._peers: dict[int, fastpath.Peer] = {}  # session id -> what the compiled path knows of it
        self._peer_keys: dict[int, tuple[list[bytes], list[int]]] = {}  # its routes and indices there
        self._fast_routes: dict[bytes, fastpath.Peer] = {}
        self._fast_indices: dict[int, fastpath.Peer] = {}
        self._fast_socks: dict[int, UdpSender] = {}  # the compiled path's socket number -> its sender
        self.tcp_servers: list[asyncio.AbstractServer] = []
        self.tcp_conns: dict[FramedConnection, TcpEndpoint] = {}
        self.status_server: asyncio.AbstractServer | None = None
        self.nft: NftTable | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._stopping: asyncio.Event | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        self.tun = TunDevice.create(cfg.tun_name, cfg.mtu)
        netlink.prepare_tunnel_interface(self.tun.name)
        netlink.add_address(self.tun.name, f"{self.pool4.gateway_address}/{cfg.pool_v4.prefixlen}")
        if self.pool6 is not None and cfg.pool_v6 is not None:
            netlink.add_address(self.tun.name, f"{self.pool6.gateway_address}/{cfg.pool_v6.prefixlen}")
        netlink.set_link(self.tun.name, up=True, mtu=cfg.mtu)
        if self.fast_wanted:
            self.fast = fastpath.GatewayPath(
                self.tun.fd, self._fast_routes, self._fast_indices, cfg.client_to_client, REJECT_AFTER_TIME
            )
            if add_compiled_reader(loop, self.tun.fd, self.fast, fastpath.KIND_TUN, 0, self._after_fast):
                self.core.changed = set()
                log.debug("compiled data path on")
            else:
                self.fast = None
        if self.fast is None:
            add_data_reader(loop, self.tun.fd, self._on_tun_readable)

        for host in [cfg.listen, cfg.listen6]:
            if host is None:
                continue
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_BUFFER)
            try:
                sock.bind((host, cfg.udp_port))
            except OSError as exc:
                sock.close()
                if family == socket.AF_INET6 and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    log.warning("IPv6 listening unavailable (%s); UDP on IPv4 only", exc.strerror)
                    continue
                raise
            sock.setblocking(False)
            self.udp_socks.append(sock)
            tx = self.udp_tx[sock] = UdpSender(sock, gso=cfg.udp_offload)
            gro = cfg.udp_offload and enable_gro(sock)
            if gro:
                self._gro.add(sock)
            if self.fast is not None:
                number = self.fast.add_socket(sock.fileno(), cfg.udp_offload, gro)
                self._fast_socks[number] = tx
                add_compiled_reader(
                    loop, sock.fileno(), self.fast, fastpath.KIND_UDP, number, self._after_fast
                )
            else:
                add_data_reader(loop, sock.fileno(), self._on_udp_readable, sock, tx, gro)
            server = await serve_tcp(host, cfg.tcp_port, self._on_tcp_datagrams, self._on_tcp_close)
            self.tcp_servers.append(server)

        if cfg.nat or not cfg.client_to_client:
            self.nft = NftTable(f"veilgate_{self.tun.name}")
            body = ""
            if not cfg.client_to_client:
                body += gateway_isolation_rules(self.tun.name)
            if cfg.nat and cfg.nat_interface:
                pools = [str(cfg.pool_v4)] + ([str(cfg.pool_v6)] if cfg.pool_v6 else [])
                body += gateway_nat_rules(pools, cfg.nat_interface)
            self.nft.apply(body)

        if self.provider is not None:
            loaded = await self._refresh_epochs()
            self._provider_task = asyncio.ensure_future(self._provider_loop(loaded))
        cfg.status_socket.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            cfg.status_socket.unlink()
        self.status_server = await asyncio.start_unix_server(self._on_status, path=str(cfg.status_socket))
        os.chmod(cfg.status_socket, 0o600)
        log.info(
            "gateway up: udp %d, tcp %d, tun %s, pools %s%s",
            cfg.udp_port,
            cfg.tcp_port,
            self.tun.name,
            cfg.pool_v4,
            f" {cfg.pool_v6}" if cfg.pool_v6 else "",
        )

    async def _refresh_epochs(self) -> bool:
        """Load the issuer's epoch keys from the provider document; False if the provider is unreachable."""
        assert self.provider is not None
        try:
            fetched = await self.provider.fetch_document(time.time())
        except ProviderInconsistent:
            # Logged as an error by the provider client; the keys seen before stay in force.
            self.counters["provider-inconsistent"] += 1
            return False
        except ProviderUnavailable as exc:
            self.counters["provider-unreachable"] += 1
            log.warning("provider document not refreshed: %s", exc)
            return False
        doc = fetched.document
        before = self.epochs.epoch_keys()
        self.epochs.epoch_length = doc.epoch_length
        self.epochs.update(doc.epochs)
        log.info("issuer epoch keys loaded: epochs %s", ", ".join(str(e.epoch) for e in doc.epochs))
        if self.epochs.epoch_keys() != before:
            self._push_epoch_keys()
        return True

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
            self._after_io(now)

    async def _provider_loop(self, ok: bool) -> None:
        """Refresh after each epoch starts (new keys) and at least every 5 minutes; retry with backoff."""
        retry = 1.0
        while True:
            if ok:
                length = self.epochs.epoch_length
                now = time.time()
                await asyncio.sleep(min(300.0, (int(now // length) + 1) * length - now + 1.0))
            ok = await self._refresh_epochs()
            if not ok:
                await asyncio.sleep(retry)
                retry = min(retry * 2, 60.0)
            else:
                retry = 1.0

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
        if self._timer is not None:
            self._timer.cancel()
        if self._provider_task is not None:
            self._provider_task.cancel()
        for sock in self.udp_socks:
            remove_data_reader(loop, sock.fileno())
            sock.close()
        self.udp_socks.clear()
        self.udp_tx.clear()
        self._gro.clear()
        self._udp_memo = None
        for server in self.tcp_servers:
            server.close()
        for conn in list(self.tcp_conns):
            conn.close()
        self.tcp_servers.clear()
        if self.status_server is not None:
            self.status_server.close()
            with contextlib.suppress(FileNotFoundError):
                self.config.status_socket.unlink()
        if self.tun is not None:
            remove_data_reader(loop, self.tun.fd)
            self.tun.close()
            self.tun = None
        if self.nft is not None:
            self.nft.delete()
        for session_id in list(self.core.sessions):
            self.core.end_session(session_id, "gateway stopping")
        self._process_events()
        log.info("gateway stopped")

    # ------------------------------------------------------------ I/O callbacks

    def _on_udp_readable(self, sock: socket.socket, tx: UdpSender, gro: bool) -> None:
        now = self.clock()
        core = self.core
        tun_write = os.write
        tun_fd = self.tun.fd if self.tun is not None else -1
        # After a quiet spell, one lone datagram is all there is: skip the receive that would
        # find the socket empty (epoll is level-triggered, so anything more wakes us again).
        quiet = now - self._udp_wake >= QUIET_GAP
        self._udp_wake = now
        segment = 0
        addr: Any
        for _ in range(UDP_BATCH):
            try:
                if gro:
                    data, segment, addr = recv_coalesced(sock)
                else:
                    data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP errors reported on the socket
                self.counters["udp-recv-error"] += 1
                log.debug("udp receive error: %s", exc.strerror)
                continue
            endpoint = self._udp_endpoint(addr, tx)
            parts = split(data, segment) if segment else (data,)
            for part in parts:
                packet = core.receive_datagram(part, endpoint, now)
                if packet is not None:
                    self._deliver(packet, tun_write, tun_fd)
            if quiet and len(parts) == 1:
                break
            quiet = False
        self._after_io(now)

    def _on_tcp_datagrams(self, datagrams: list[bytes], conn: FramedConnection) -> None:
        now = self.clock()
        endpoint = self.tcp_conns.get(conn)
        if endpoint is None:
            if len(self.tcp_conns) >= self.config.max_tcp_connections:
                self.counters["tcp-too-many"] += 1
                conn.close()
                return
            endpoint = self.tcp_conns[conn] = TcpEndpoint(conn, self._tcp_to_flush)
        receive = self.core.receive_datagram
        tun_fd = self.tun.fd if self.tun is not None else -1
        for data in datagrams:
            if conn.closed:  # e.g. the session on it ended
                break
            packet = receive(data, endpoint, now)
            if packet is not None and tun_fd >= 0:
                self._deliver(packet, os.write, tun_fd)
        self._after_io(now)

    def _on_tcp_close(self, conn: FramedConnection) -> None:
        self.tcp_conns.pop(conn, None)

    def _deliver(self, packet: bytes, tun_write: Callable[[int, bytes], int], tun_fd: int) -> None:
        if not self.config.client_to_client and ip.destination(packet) in self.routes:
            self.counters["client-to-client-dropped"] += 1
            return
        try:
            tun_write(tun_fd, packet)
        except OSError as exc:
            self.counters["tun-write-error"] += 1
            log.debug("tun write failed: %s", exc.strerror)

    def _on_tun_readable(self) -> None:
        if self.tun is None:
            return
        now = self.clock()
        # After a quiet spell the first packet leaves at once, before the read that finds the
        # device empty; under load the packets of one wake-up leave together (GSO runs).
        quiet = now - self._tun_wake >= QUIET_GAP
        self._tun_wake = now
        fd = self.tun.fd
        read = os.read
        route = self._route
        for _ in range(TUN_BATCH):
            try:
                packet = read(fd, 65535)
            except (BlockingIOError, InterruptedError):
                break
            if not packet:
                break
            if route(packet, now, quiet):
                quiet = False
        self._flush()
        self._after_io(now)

    def _route(self, packet: bytes, now: float, at_once: bool) -> bool:
        """Seal a packet from the TUN for the session its destination belongs to; True if it left.

        ``at_once``: send it now; otherwise it waits in its endpoint's queue for ``_flush``."""
        session = self.routes.get(ip.destination(packet))
        if session is None:
            self.counters["tun-no-route"] += 1
            return False
        out = self.core.send_packet(session, packet, now)
        if out is None:
            return False
        endpoint = out[1]
        assert isinstance(endpoint, UdpEndpoint | TcpEndpoint)
        if at_once:
            endpoint.send(out[0])
        else:
            endpoint.queue(out[0])
        return True

    def _flush(self) -> None:
        for tx in self.udp_tx.values():
            tx.flush()
        if self._tcp_to_flush:
            for conn in self._tcp_to_flush:
                conn.flush()
            self._tcp_to_flush.clear()

    def _after_io(self, now: float) -> None:
        for data, endpoint in self.core.datagrams_to_send():
            assert isinstance(endpoint, UdpEndpoint | TcpEndpoint)
            endpoint.send(data)
        if self._process_events():
            for data, endpoint in self.core.datagrams_to_send():
                assert isinstance(endpoint, UdpEndpoint | TcpEndpoint)
                endpoint.send(data)
        changed = self.core.changed
        if changed:
            for session in changed:
                self._update_peer(session)
            changed.clear()
        self._arm_timer()

    # ------------------------------------------------------------ the compiled data path

    def _update_peer(self, session: Session) -> None:
        """Tell the compiled data path what the core decided for a session (or that it ended)."""
        peer = self._peers.get(session.id)
        old_routes, old_indices = self._peer_keys.pop(session.id, ([], []))
        for key in old_routes:  # unless another session took the address or index over meanwhile
            if self._fast_routes.get(key) is peer:
                del self._fast_routes[key]
        for index in old_indices:
            if self._fast_indices.get(index) is peer:
                del self._fast_indices[index]
        if session.id not in self.core.sessions:
            if peer is not None:
                del self._peers[session.id]
                peer.owner = None
            return
        if peer is None:
            peer = self._peers[session.id] = fastpath.Peer(session)
        keypairs = [kp for kp in (session.current, session.previous) if isinstance(kp, CompiledKeypair)]
        send = session.current.keys if isinstance(session.current, CompiledKeypair) else None
        number, sockaddr = fastpath.ROUTE_NONE, None
        endpoint = session.endpoint
        if isinstance(endpoint, UdpEndpoint):
            for n, tx in self._fast_socks.items():
                if tx is endpoint.tx:
                    sockaddr = _sockaddr(endpoint.addr)
                    number = n if sockaddr is not None else fastpath.ROUTE_NONE
                    break
        config = session.config
        v4 = config.ipv4.ip.packed if config is not None and config.ipv4 is not None else None
        v6 = config.ipv6.ip.packed if config is not None and config.ipv6 is not None else None
        peer.update(send, tuple(kp.keys for kp in keypairs), number, sockaddr, v4, v6)
        routes = [key for key in (v4, v6) if key is not None]
        indices = [kp.local_index for kp in keypairs]
        for key in routes:
            self._fast_routes[key] = peer
        for index in indices:
            self._fast_indices[index] = peer
        self._peer_keys[session.id] = (routes, indices)

    def _after_fast(self) -> None:
        """After the compiled loops ran: account for what they did, handle what they passed on."""
        fast = self.fast
        if fast is None:
            return
        pending, touched = fast.take()
        now = self.clock()
        core = self.core
        for peer in touched:
            # The module's activity is still a tuple: an ActivityRecord until it returns an Activity.
            tx_packets, tx_bytes, last_tx, authenticated, rx_packets, rx_bytes, last_rx = peer.take()
            activity = ActivityRecord(
                tx_packets, tx_bytes, last_tx, 0.0, authenticated, rx_packets, rx_bytes, last_rx
            )
            session = peer.owner
            if isinstance(session, Session) and session.id in core.sessions:
                core.account(session, activity)
        if pending:
            tun_fd = self.tun.fd if self.tun is not None else -1
            for kind, data, number, addr, index in pending:
                if kind == fastpath.PENDING_TUN:
                    self._route(data, now, False)
                    continue
                tx = self._fast_socks.get(number)
                if tx is None or addr is None:
                    continue
                endpoint = self._udp_endpoint(addr, tx)
                if kind == fastpath.PENDING_DATAGRAM:
                    packet = core.receive_datagram(data, endpoint, now)
                    if packet is not None and tun_fd >= 0:
                        self._deliver(packet, os.write, tun_fd)
                else:
                    core.receive_opened(index, data, endpoint, now)
            self._flush()
        self._after_io(now)

    def _udp_endpoint(self, addr: Any, tx: UdpSender) -> UdpEndpoint:
        """The endpoint for a datagram's sender.

        Datagrams in a row from one address share one endpoint object, so that the core's check
        for a roamed client is an identity test. Only the last sender is remembered (and forgotten
        when a session ends): no list of client addresses builds up here."""
        memo = self._udp_memo
        if memo is not None and memo[0] == addr and memo[1].tx is tx:
            return memo[1]
        endpoint = UdpEndpoint(addr, tx)
        self._udp_memo = (addr, endpoint)
        return endpoint

    def _arm_timer(self) -> None:
        at = self.core.get_timer()
        if at == self._timer_at:
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
        self._after_io(now)

    # ------------------------------------------------------------ sessions

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
                self._release(event.session_id)
                self.counters["sessions-ended"] += 1
                log.info("session ended (%s); %d active", event.reason, len(self.core.sessions))
            elif isinstance(event, SessionRekeyed):
                self.counters["rekeys"] += 1
                if event.identity_rotated:
                    self.counters["identity-rotations"] += 1
                    log.debug("session %d rotated its identity", event.session_id)
            elif isinstance(event, HandshakeRefused):
                self.counters["refused-" + event.reason] += 1
                log.warning("handshake refused: credential %s", event.reason)
            event = self.core.next_event()
        return True

    def _assign(self, session_id: int, now: float) -> None:
        cfg = self.config
        session = self.core.sessions[session_id]
        try:
            v4 = self.pool4.allocate()
            v6 = self.pool6.allocate() if self.pool6 is not None else None
        except PoolExhausted:
            log.error("address pool exhausted; refusing a session")
            self.counters["pool-exhausted"] += 1
            self.core.end_session(session_id, "pool exhausted")
            return
        tunnel = TunnelConfig(
            ipv4=ipaddress.IPv4Interface(f"{v4}/{cfg.pool_v4.prefixlen}"),
            ipv6=ipaddress.IPv6Interface(f"{v6}/{cfg.pool_v6.prefixlen}") if v6 and cfg.pool_v6 else None,
            dns=tuple(cfg.dns),
            routes=tuple(cfg.routes),
            mtu=cfg.mtu,
            lease=cfg.lease,
            keepalive=10,
            epoch_keys=self.epochs.epoch_keys(),
        )
        session.extra["addresses"] = (v4, v6)
        self.routes[v4.packed] = session
        if v6 is not None:
            self.routes[v6.packed] = session
        self.core.assign(session_id, tunnel, now)
        self.counters["sessions-established"] += 1
        log.info("session established; %d active", len(self.core.sessions))
        log.debug("session %d assigned its addresses", session_id)

    def _release(self, session_id: int) -> None:
        self._udp_memo = None  # no client address outlives its session here
        for key, session in list(self.routes.items()):
            if session.id == session_id:
                del self.routes[key]
                address = ipaddress.ip_address(key)
                pool = self.pool4 if address.version == 4 else self.pool6
                if pool is not None:
                    pool.release(address)

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, object]:
        """Aggregate figures only: no keys, no client addresses, no tunnel addresses."""
        now = self.clock()
        sessions = list(self.core.sessions.values())
        fast = self.fast.counters() if self.fast is not None else {}
        udp = {
            k: fast.pop(k, 0)
            for k in ("udp-datagrams-out", "udp-sends", "udp-send-dropped", "udp-gso-refused")
        }
        by_transport = Counter(getattr(s.endpoint, "transport", "?") for s in sessions)
        return {
            "role": "gateway",
            "uptime": round(time.time() - self.started, 1),
            "sessions": len(sessions),
            "pending_handshakes": self.core.pending_handshakes,
            "sessions_by_transport": dict(by_transport),
            "session_list": [
                {
                    "transport": getattr(s.endpoint, "transport", "?"),
                    "rx_bytes": s.rx_bytes,
                    "tx_bytes": s.tx_bytes,
                    "last_handshake_age": round(now - s.last_handshake, 1),
                }
                for s in sessions
            ],
            "rx_bytes": sum(s.rx_bytes for s in sessions),
            "tx_bytes": sum(s.tx_bytes for s in sessions),
            "pool_v4_in_use": self.pool4.in_use,
            "tcp_connections": len(self.tcp_conns),
            "counters": dict(self.core.counters + self.counters + Counter(fast)),
            "data_path": "compiled" if self.fast is not None else "python",
            "udp": {
                "gso": all(tx.gso for tx in self.udp_tx.values()) and not udp["udp-gso-refused"],
                "gro": len(self._gro) == len(self.udp_tx),
                "datagrams_out": sum(tx.datagrams for tx in self.udp_tx.values()) + udp["udp-datagrams-out"],
                "sends": sum(tx.syscalls for tx in self.udp_tx.values()) + udp["udp-sends"],
                "dropped": sum(tx.dropped for tx in self.udp_tx.values()) + udp["udp-send-dropped"],
            },
        }

    async def _on_status(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(self.status()).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()


def _sockaddr(addr: tuple[Any, ...]) -> bytes | None:
    """The ``struct sockaddr_in``/``sockaddr_in6`` of a (host, port) as Python's socket module gives it."""
    host, port = str(addr[0]), int(addr[1])
    try:
        if ":" not in host:
            return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", port, socket.inet_aton(host))
        name, _, scope = host.partition("%")
        scope_id = 0
        if scope:
            scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
        packed = socket.inet_pton(socket.AF_INET6, name)
        return (
            struct.pack("=H", socket.AF_INET6)
            + struct.pack("!HI16s", port, 0, packed)
            + struct.pack("=I", scope_id)
        )
    except (OSError, ValueError):
        return None  # the compiled path leaves this client to Python


class _WallClockCheck:
    """Credentials carry wall-clock validity windows; the core's ``now`` is monotonic.

    This adapter gives the verifier the wall clock, the one place a daemon reads it.
    """

    def __init__(self, verifier: AnyCredentialVerifier) -> None:
        self.verifier = verifier

    def verify(self, data: bytes, static_public: bytes, now: float) -> object:
        return self.verifier.verify(data, static_public, time.time())


def run_gateway(config: GatewayConfig) -> int:
    logging.getLogger("veilgate").setLevel(config.log_level.upper())
    gateway = Gateway(config)
    event_loop.run(gateway.run())
    return 0


__all__ = ["Gateway", "run_gateway"]
