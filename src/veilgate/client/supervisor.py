"""Provider mode: a client that knows only the provider's URL and pinned fingerprint.

It bootstraps from the signed provider document (cached, so a provider outage
does not stop a client whose cached document and credential are still valid),
picks the best gateway by measured handshake round-trip time and the
document's load hints (``veilgate.client.ranking``), obtains a blind
credential for a fresh static key, and connects. That first credential is the
only one fetched from the client's own address (besides a failover with
nothing left in the stash): once the tunnel is up, identities for the coming
epochs are fetched ahead, at random moments and through the tunnel
(``veilgate.client.prefetch``). Early in each epoch the client takes a stashed
identity and re-handshakes under it on the same session (the tunnel, its
addresses and the TCP connections inside it stay up). When the gateway stops
answering for ``failover_after`` seconds it moves to the next gateway, with
another stashed identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import time
import urllib.parse
from collections import Counter

from veilgate.client.addresses import is_literal
from veilgate.client.config import ClientConfig
from veilgate.client.daemon import TOTALS, Client, client_metrics, client_run_as, reload_client_config
from veilgate.client.prefetch import Identity, IdentityStash, fetch_time, quiet_margin, rotation_time
from veilgate.client.ranking import rank_gateways
from veilgate.client.system import SystemState
from veilgate.credentials.epochs import BlindCredential, epoch_of
from veilgate.monitor.metrics import Metric, MetricsServer
from veilgate.netfilter import NftTable, kill_switch_rules_for
from veilgate.protocol.crypto import KeyPair
from veilgate.provider.client import FetchedDocument, ProviderClient, ProviderUnavailable
from veilgate.provider.document import GatewayEntry
from veilgate.systemd.notify import Service
from veilgate.transport import loop as event_loop

log = logging.getLogger("veilgate.client")


class ProviderModeClient:
    def __init__(self, config: ClientConfig) -> None:
        assert config.provider_url and config.provider_fingerprint
        self.config = config
        self.provider = ProviderClient(
            config.provider_url, config.provider_fingerprint, cache_dir=config.state_dir / "provider"
        )
        self.fetched: FetchedDocument | None = None
        self.client: Client | None = None
        self.gateway: GatewayEntry | None = None
        self.credential: BlindCredential | None = None
        self.rotations = 0
        self.failovers = 0
        self.stash = IdentityStash()
        self._session_identities: list[Identity] = []
        self.prefetched = 0
        self.direct_fetches = 0
        self.split_view = False
        self._split_gateways: set[bytes] = set()  # public keys of gateways that showed a split view
        self._stop = asyncio.Event()
        # The kill switch is the supervisor's, not each gateway connection's: it stays on from
        # the start through every failover, and lets out only the provider and the gateways.
        self._ks_state = SystemState(config.state_dir / f"killswitch-{config.tun_name}.json")
        self._ks_dns = config.state_dir / "killswitch.dns"  # never written: the switch touches no DNS
        self._ks_table = NftTable(f"veilgate_ks_{config.tun_name}")
        self._ks_provider: list[tuple[str, str, int]] = []
        self._ks_allowed: frozenset[tuple[str, str, int]] | None = None
        self._past: Counter[str] = Counter()
        """``Client.totals`` of the connections that ended: the metrics' totals never go down."""
        self.service: Service | None = None
        """Under a service manager: the privilege drop once the kill switch is on, READY=1 once the
        first tunnel has its address, the watchdog and reload."""

    # ------------------------------------------------------------ provider

    async def document(self, *, required: bool) -> FetchedDocument | None:
        """A fresh document, else the cached one if valid; retries with backoff while ``required``."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                self.fetched = await self.provider.fetch_document(time.time())
                self._update_kill_switch()
                return self.fetched
            except ProviderUnavailable as exc:
                cached = self.provider.cached_document(time.time())
                if cached is not None:
                    log.warning("provider unreachable (%s); using the cached provider document", exc)
                    self.fetched = cached
                    self._update_kill_switch()
                    return cached
                if not required:
                    log.warning("provider unreachable (%s)", exc)
                    return None
                log.error("cannot start: %s; no valid cached document; retrying in %.0f s", exc, delay)
            await self._sleep(delay)
            delay = min(delay * 2, 60.0)
        return None

    async def new_identity(self, *, once: bool = False) -> tuple[KeyPair, BlindCredential] | None:
        """A fresh static key and a blind credential for it, for the current epoch, fetched from this
        host's own address: at bootstrap, and as the last resort of a new session with an empty stash.

        Retries with backoff until it succeeds, or, with ``once``, gives up after one attempt.
        """
        delay = 1.0
        while not self._stop.is_set():
            fetched = self.fetched or await self.document(required=True)
            if fetched is None:
                return None
            doc = fetched.document
            epoch_key = doc.epoch_key(epoch_of(time.time(), doc.epoch_length))
            if epoch_key is None:
                await self.document(required=False)
                fetched = self.fetched
                epoch_key = (
                    fetched.document.epoch_key(epoch_of(time.time(), doc.epoch_length)) if fetched else None
                )
            if epoch_key is not None:
                key = KeyPair.generate()
                try:
                    credential = await self.provider.obtain_credential(
                        epoch_key, key.public, self.config.provider_token
                    )
                    self.direct_fetches += 1
                    return key, credential
                except ProviderUnavailable as exc:
                    log.error("no new credential: %s; retrying in %.0f s", exc, delay)
            else:
                log.error("the provider document has no issuing key for the current epoch; retrying")
            if once:
                return None
            await self._sleep(delay)
            delay = min(delay * 2, 60.0)
        return None

    async def prefetch_identity(self, epoch: int, device: str) -> Identity | None:
        """One identity for ``epoch``, fetched only through the tunnel device ``device``.

        The document is refreshed the same way when it lacks that epoch's key. None on failure.
        """
        try:
            fetched = self.fetched
            if fetched is None or fetched.document.epoch_key(epoch) is None:
                fetched = self.fetched = await self.provider.fetch_document(time.time(), device=device)
                self._update_kill_switch()
            epoch_key = fetched.document.epoch_key(epoch)
            if epoch_key is None:
                log.warning("prefetch: the provider document has no key for epoch %d yet", epoch)
                return None
            key = KeyPair.generate()
            credential = await self.provider.obtain_credential(
                epoch_key, key.public, self.config.provider_token, device=device
            )
        except ProviderUnavailable as exc:
            log.warning("prefetch through the tunnel failed: %s; trying again later", exc)
            return None
        self.prefetched += 1
        return Identity(key, credential)

    async def _prefetch_loop(self, client: Client) -> None:
        """Keep the stash filled: each fetch at its own random moment of the epoch's fetch window."""
        while not self._stop.is_set():
            length = self.fetched.document.epoch_length if self.fetched else 86400
            now = time.time()
            epoch = epoch_of(now, length)
            self.stash.prune(epoch)
            at = fetch_time(now, length) if self.stash.wanted(epoch) is not None else None
            if at is None:  # the stash is full, or this epoch's window is over: plan again next epoch
                await self._sleep((epoch + 1) * length - now + 0.1)
                continue
            await self._sleep(at - now)
            if self._stop.is_set() or epoch_of(time.time(), length) != epoch:
                continue
            target = self.stash.wanted(epoch)
            tun = client.tun
            if target is None or tun is None or not client.core.connected or client.applied is None:
                continue
            identity = await self.prefetch_identity(target, tun.name)
            if identity is not None:
                self.stash.add(identity)
                log.info("identity for epoch %d fetched ahead through the tunnel", identity.epoch)
                self._update_status()

    def _identity_for_new_session(self) -> Identity | None:
        length = self.fetched.document.epoch_length if self.fetched else 86400
        epoch = epoch_of(time.time(), length)
        self.stash.prune(epoch)
        return self.stash.take_usable(epoch)

    # ------------------------------------------------------------ kill switch

    def _start_kill_switch(self) -> None:
        """Before any other traffic: the provider's address(es) and the cached document's gateways."""
        url = urllib.parse.urlsplit(self.config.provider_url or "")
        host, port = url.hostname or "", url.port or 443
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            # (an IPv6 link-local answer carries its %scope, which a firewall rule does not take)
            self._ks_provider = sorted({(str(info[4][0]).split("%")[0], "tcp", port) for info in infos})
        except OSError as exc:
            # Fail closed: the switch goes on anyway; the cached document's gateways still work.
            log.error(
                "kill switch: cannot resolve the provider host %s (%s); only gateways allowed", host, exc
            )
        self._ks_state.nft_table = self._ks_table.name
        self._ks_state.save()
        self.fetched = self.fetched or self.provider.cached_document(time.time())
        self._update_kill_switch()
        log.info("kill switch on: only the provider, the gateways and the tunnel are reachable")

    def _update_kill_switch(self) -> None:
        if self._ks_state.nft_table is None:
            return
        allowed = set(self._ks_provider)
        if self.fetched is not None:
            for gw in self.fetched.document.gateways:
                try:
                    socket.inet_pton(socket.AF_INET6 if ":" in gw.host else socket.AF_INET, gw.host)
                except OSError:
                    log.warning(
                        "kill switch: gateway %s has no address literal (%s); skipped", gw.name, gw.host
                    )
                    continue
                for host in [gw.host] + ([gw.ipv6] if gw.ipv6 and is_literal(gw.ipv6) else []):
                    allowed.update({(host, "udp", gw.udp_port), (host, "tcp", gw.tcp_port)})
                    if gw.tls_port:
                        allowed.add((host, "tcp", gw.tls_port))
        if frozenset(allowed) != self._ks_allowed:
            self._ks_table.apply(kill_switch_rules_for(self.config.tun_name, allowed))
            self._ks_allowed = frozenset(allowed)

    def _stop_kill_switch(self) -> None:
        if self._ks_state.nft_table is not None:
            self._ks_state.undo(self._ks_dns)
            log.info("kill switch off")

    # ------------------------------------------------------------ running

    def metrics(self) -> list[Metric]:
        client = self.client
        live = client.totals() if client is not None else {}
        totals = {name: self._past[name] + live.get(name, 0) for name in TOTALS}
        extra = {
            "failovers": ("Moves to another gateway", self.failovers),
            "identity_rotations": ("New static keys and credentials on the same session", self.rotations),
            "identities_prefetched": ("Identities fetched ahead through the tunnel", self.prefetched),
            "direct_fetches": ("Credentials fetched from this host's own address", self.direct_fetches),
        }
        return client_metrics(client, totals, extra)

    async def run(self) -> None:
        metrics = (
            MetricsServer(self.config.metrics_listen, self.metrics) if self.config.metrics_listen else None
        )
        if metrics is not None:
            await metrics.start()
        try:
            await self._run_with_kill_switch()
        finally:
            if metrics is not None:
                await metrics.stop()

    async def _run_with_kill_switch(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        if SystemState.recover(self._ks_state.path, self._ks_dns):
            log.warning("removed a kill switch left behind by a previous run")
        try:
            if self.config.kill_switch:
                self._start_kill_switch()
            if self.service is not None:
                self.service.started(loop)
            await self._run()
        finally:
            if self.service is not None:
                self.service.stopping()
            self._stop_kill_switch()

    async def _run(self) -> None:
        fetched = await self.document(required=True)
        if fetched is None:
            return
        attempt = 0
        failed: GatewayEntry | None = None
        while not self._stop.is_set():
            assert self.fetched is not None
            candidates = tuple(
                g for g in self.fetched.document.gateways if g.public_key not in self._split_gateways
            )
            if not candidates:
                log.error("every gateway showed a split view of the epoch keys; not connecting")
                await self._stop.wait()
                break
            ranked = await rank_gateways(candidates)
            for gw, rtt in ranked:
                log.info(
                    "gateway %s (%s): %s",
                    gw.name,
                    gw.location,
                    f"handshake RTT {rtt * 1000:.1f} ms" if rtt is not None else "no answer over UDP",
                )
            # The best gateway that answered, other than the one that just failed; else round robin.
            answered = [gw for gw, rtt in ranked if rtt is not None and gw != failed]
            gateway = answered[0] if answered else ranked[attempt % len(ranked)][0]
            stashed = self._identity_for_new_session()
            if stashed is not None:
                identity: tuple[KeyPair, BlindCredential] | None = (stashed.key, stashed.credential)
            else:
                # Bootstrap, or a failover with nothing left in the stash: the only fetches from this
                # host's own address (docs/credentials.md, section 9).
                if self.direct_fetches:
                    log.warning("no identity fetched ahead is left: fetching one directly")
                identity = await self.new_identity()
            if identity is None:
                break
            outcome = await self.connect(gateway, *identity)
            if outcome == "stop":
                break
            if outcome == "expired":
                log.warning("the credential ran out and none was fetched ahead; new session")
                continue
            self.failovers += 1
            attempt += 1
            failed = gateway
            if outcome == "failover":
                log.warning("gateway %s stopped answering; failing over", gateway.name)
            await self.document(required=False)

    async def connect(self, gateway: GatewayEntry, key: KeyPair, credential: BlindCredential) -> str:
        cfg = dataclasses.replace(
            self.config,
            gateway_host=gateway.host,
            gateway_addresses=(gateway.ipv6,) if gateway.ipv6 and is_literal(gateway.ipv6) else (),
            gateway_public_key=gateway.public_key,
            udp_port=gateway.udp_port,
            tcp_port=gateway.tcp_port,
            tls_port=gateway.tls_port or 443,
            tls_name=gateway.tls_name,
            tls_pin=gateway.tls_pin,
            # Plain TCP where the gateway has it and no TLS carrier, or where the client asks for it.
            plain_tcp=bool(gateway.tcp_port) and (self.config.plain_tcp or not gateway.tls_pin),
            obfuscation=gateway.obfuscation,
            private_key=key.private_bytes(),
            credential=credential.encode(),
            kill_switch=False,  # the supervisor's kill switch covers every gateway, see run()
            metrics_listen=None,  # the supervisor's endpoint covers every connection
        )
        self.gateway, self.credential = gateway, credential
        client = self.client = Client(cfg)
        client.service = self.service
        self._session_identities = [Identity(key, credential)]
        self._update_status()
        log.info("connecting to gateway %s (%s)", gateway.name, gateway.location)
        await client.start()
        try:
            return await self.supervise(client)
        finally:
            await client.stop()
            self._past.update(client.totals())
            self.client = None
            self._keep_unshown(client)

    def _keep_unshown(self, client: Client) -> None:
        """Back to the stash with the identities of a session that never heard from its gateway.

        The static key and the credential travel only in handshake message 3, written once the
        gateway's response has been read; before that nothing of them has left this host, so an
        attempt on a gateway that is down costs no identity (and no fetch).
        """
        if client.core.authenticated_rx == 0:
            for identity in self._session_identities:
                self.stash.add(identity)
        self._session_identities = []

    async def supervise(self, client: Client) -> str:
        length = self.fetched.document.epoch_length if self.fetched else 86400
        renew_at = self._renewal_time(self.credential, length)
        started = time.monotonic()
        prefetch = asyncio.ensure_future(self._prefetch_loop(client))
        try:
            while not self._stop.is_set():
                await self._sleep(0.5)
                failed = prefetch.exception() if prefetch.done() and not prefetch.cancelled() else None
                if failed is not None:
                    raise failed
                if self._split_view_seen(client):
                    return "split-view"
                now = time.monotonic()
                core = client.core
                if core.unanswered_for(now) > self.config.failover_after or (
                    not core.connected and now - started > self.config.failover_after
                ):
                    return "failover"
                if time.time() >= renew_at:
                    renew_at = self.rotate(client, length)
                if self.credential is not None and time.time() >= self._expiry(self.credential, length):
                    return "expired"
            return "stop"
        finally:
            prefetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prefetch

    def rotate(self, client: Client, length: int) -> float:
        """The rotation of this epoch, with a stashed identity (never a fetch); the next one's time."""
        epoch = epoch_of(time.time(), length)
        current = self.credential.epoch if self.credential is not None else epoch - 2
        identity = self.stash.take(e for e in (epoch, epoch - 1) if e > current)
        if identity is None:
            # Nothing was fetched ahead (the provider was unreachable all through the last epoch's
            # window). The current credential may still be valid; keep it, never fetch now.
            log.warning(
                "no identity fetched ahead for epoch %d; keeping the credential of epoch %d", epoch, current
            )
            return rotation_time(epoch + 1, length)
        client.rotate_identity(identity.key, identity.credential.encode())
        self._session_identities.append(identity)
        self.credential = identity.credential
        self.rotations += 1
        log.info("new static key and credential (epoch %d); same session", identity.epoch)
        self._update_status()
        return rotation_time(epoch + 1, length)

    def _split_view_seen(self, client: Client) -> bool:
        """Compare the epoch keys the gateway accepts (CONFIG) with every epoch key this client has seen.

        A different key for an epoch both know means the provider shows this
        client (or this gateway) another view than others: per-user keys. The
        gateway is dropped for good and the client fails over to another.
        """
        config = client.core.config
        if config is None or not config.epoch_keys or self.gateway is None:
            return False
        known = self.provider.ledger.known
        differing = sorted({e for e, key_id in config.epoch_keys if known.get(e, key_id) != key_id})
        if not differing:
            return False
        log.error(
            "split view: gateway %s accepts other issuer keys than the provider document gave this client "
            "(epoch %s); the provider may be singling users out; not using this gateway",
            self.gateway.name,
            ", ".join(map(str, differing)),
        )
        self.split_view = True
        self._split_gateways.add(self.gateway.public_key)
        self._update_status()
        return True

    @staticmethod
    def _renewal_time(credential: BlindCredential | None, length: int) -> float:
        """Early in the epoch after the credential's, at a random moment, so rotations do not line up
        across clients (and no prefetch falls near them)."""
        if credential is None:
            return time.time()
        return rotation_time(credential.epoch + 1, length)

    @staticmethod
    def _expiry(credential: BlindCredential, length: int) -> float:
        """When a gateway stops taking the credential (end of the next epoch), after the last moment
        a rotation could take place."""
        return (credential.epoch + 2) * length + 1.0 + quiet_margin(length)

    def _update_status(self) -> None:
        if self.client is not None:
            self.client.extra_status = {
                "gateway": self.gateway.name if self.gateway else None,
                "credential_epoch": self.credential.epoch if self.credential else None,
                "identity_rotations": self.rotations,
                "failovers": self.failovers,
                "identities_stashed": len(self.stash),
                "identities_prefetched": self.prefetched,
                "direct_fetches": self.direct_fetches,
                "split_view": self.split_view,
            }

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def reload(self) -> None:
        """Read the configuration file again: the log level, ``failover_after`` and ``provider_token``
        change at run time (for the next failover and credential fetch)."""
        self.config = reload_client_config(self.config, {"log_level", "failover_after", "provider_token"})

    def summary(self) -> str:
        client = self.client
        state = client.summary() if client is not None else "choosing a gateway"
        return f"{state}; {self.failovers} failovers, {self.rotations} identity rotations"


def run_provider_client(config: ClientConfig) -> int:
    user = client_run_as(config)
    supervisor = ProviderModeClient(config)
    supervisor.service = Service("client", user, supervisor.reload, supervisor.summary, ready_at_start=False)
    event_loop.run(supervisor.run())
    return 0
