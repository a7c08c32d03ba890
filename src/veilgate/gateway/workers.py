"""A gateway on every core: worker processes under one supervisor (docs/scaling.md).

The supervisor sets the machine up once (forwarding, the TUN device's addresses, NAT), opens every
descriptor the workers serve and keeps them open for as long as it runs:

- a multi-queue TUN device, one queue per worker, with an eBPF program that sends each packet to
  the queue of the worker owning its destination address (``veilgate.tun.steering``);
- per listening address, a SO_REUSEPORT group of UDP sockets, one per worker, with a classic BPF
  program that picks the socket by the receiver index in the datagram (not under obfuscation,
  whose headers it cannot read: the kernel's hash of the client's address and port picks then);
- per listening address, one TLS and one plain TCP listening socket every worker accepts on.

Holding them keeps the kernel's numbering of queues and sockets fixed when a worker dies: its
replacement gets the same descriptors back, and no other worker's traffic moves. Each worker is a
``Gateway`` on its descriptors (``python -m veilgate.gateway.workers``, the private key and the
descriptors' numbers on its standard input), and drops its privileges itself. The supervisor
restarts a worker that exits, forwards SIGHUP and SIGTERM, and answers the status socket and the
metrics endpoint with the workers' figures summed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from veilgate.config import ConfigError
from veilgate.driver import Driver, Runtime
from veilgate.gateway.config import GatewayConfig, load_gateway_config
from veilgate.gateway.listeners import udp_socket
from veilgate.gateway.machine import Machine
from veilgate.gateway.shard import Shard
from veilgate.gateway.worker import WorkerPlace, worker_status_socket
from veilgate.monitor import logs
from veilgate.monitor.metrics import Metric
from veilgate.monitor.status import query_status
from veilgate.systemd.notify import Notifier, Service
from veilgate.transport.tcp import listening_socket
from veilgate.tun.steering import (
    SteeringError,
    attach_tun_steering,
    attach_udp_steering,
    open_tun_queues,
)

log = logging.getLogger("veilgate.gateway")

START_TIMEOUT = 60.0
"""Seconds a worker has to report ready."""
RESTART_BACKOFF = (0.5, 30.0)
"""First and longest wait before a worker that exited is started again (doubling in between)."""
STATUS_TIMEOUT = 2.0


def worker_count(config: GatewayConfig) -> int:
    """How many workers run: as configured, 0 meaning one per core this process may run on."""
    if config.workers:
        return config.workers
    return max(1, len(os.sched_getaffinity(0)))


class Supervisor(Driver):
    """Sets the machine up, runs ``n`` workers on its descriptors, sums their figures."""

    def __init__(self, config: GatewayConfig, n: int, runtime: Runtime | None = None) -> None:
        super().__init__(runtime)
        if config.source is None:
            raise ValueError("workers read the configuration file: the configuration needs its source")
        self.config = config
        self.n = n
        self.machine = Machine(self.host, config)
        self.queues: list[int] = []
        self.vnet = False
        self.udp: dict[str, list[socket.socket]] = {}
        self.tcp: dict[str, socket.socket] = {}
        self.tls: dict[str, socket.socket] = {}
        self.procs: list[asyncio.subprocess.Process | None] = [None] * n
        self.restarts = [0] * n
        self._watchers: list[asyncio.Task[None]] = []
        self._quitting = False
        self._merged: dict[str, Any] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()  # no firewall table, queue or worker outlives a failed start
            raise

    async def _start(self) -> None:
        cfg = self.config
        self.begin()
        uplink = self.machine.uplink()
        self.queues, self.vnet = open_tun_queues(
            cfg.tun_name, self.n, vnet_hdr=self.compiled_wanted and cfg.tun_offload
        )
        try:
            attach_tun_steering(self.queues[0], self.n)
        except (SteeringError, OSError) as exc:
            log.warning(
                "the TUN steering program was refused (%s): the kernel spreads packets by flow, and "
                "each worker passes those for another worker's addresses over the relay",
                exc,
            )
        for fd in self.queues:
            os.set_blocking(fd, False)
        self.machine.setup_tun(cfg.tun_name)
        self._open_sockets()
        self.machine.apply_firewall(cfg.tun_name, uplink)
        procs = await asyncio.gather(*(self._spawn(k) for k in range(self.n)))  # raises if one fails
        self._watchers = [asyncio.ensure_future(self._keep(k, proc)) for k, proc in enumerate(procs)]
        await self.serve_status(cfg.status_socket)
        await self.serve_metrics(cfg.metrics_listen)
        self.machine.log_up(cfg.tun_name, uplink, self.n)

    def _open_sockets(self) -> None:
        cfg = self.config
        for host in (cfg.listen, cfg.listen6):
            if host is None:
                continue
            first = udp_socket(host, cfg.udp_port, reuseport=True)
            if first is None:
                continue
            group = [first] + [
                s for s in (udp_socket(host, cfg.udp_port, reuseport=True) for _ in range(self.n - 1)) if s
            ]
            if not cfg.obfuscation:
                try:
                    attach_udp_steering(first, self.n)
                except (SteeringError, OSError) as exc:
                    log.warning(
                        "the UDP steering program was refused (%s): datagrams the kernel gives "
                        "another worker than their session's go over the relay",
                        exc,
                    )
            self.udp[host] = group
            if cfg.tls_cert_file is not None:
                self.tls[host] = _listening(host, cfg.tls_port, "TLS")
            if cfg.tcp_port:
                self.tcp[host] = _listening(host, cfg.tcp_port, "TCP")

    async def _spawn(self, k: int) -> asyncio.subprocess.Process:
        """Start worker ``k`` on its descriptors and wait until it serves."""
        cfg = self.config
        place: dict[str, Any] = {
            "k": k,
            "n": self.n,
            "tun_fd": self.queues[k],
            "udp": {host: socks[k].fileno() for host, socks in self.udp.items()},
            "tcp": {host: s.fileno() for host, s in self.tcp.items()},
            "tls": {host: s.fileno() for host, s in self.tls.items()},
            "vnet": self.vnet,
        }
        spec = {
            "config": str(cfg.source),
            "private_key": cfg.private_key.hex(),
            "log_level": cfg.log_level,
            "log_format": cfg.log_format,
            "place": place,
        }
        fds = [self.queues[k], *place["udp"].values(), *place["tcp"].values(), *place["tls"].values()]
        env = {key: v for key, v in os.environ.items() if not key.startswith(("NOTIFY_", "WATCHDOG_"))}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            pass_fds=fds,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(spec).encode())
        await proc.stdin.drain()
        proc.stdin.close()
        self.procs[k] = proc
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise OSError(0, f"gateway worker {k} did not start (exit status {proc.returncode})")
        return proc

    async def _keep(self, k: int, proc: asyncio.subprocess.Process) -> None:
        """Start worker ``k`` again whenever it exits, until the gateway stops."""
        while True:
            started = time.monotonic()
            code = await proc.wait()
            if self._quitting:
                return
            self.restarts[k] += 1
            log.warning("gateway worker %d exited (status %s); starting it again", k, code)
            wait = RESTART_BACKOFF[0] if time.monotonic() - started > 60 else RESTART_BACKOFF[0] * 4
            while True:
                await asyncio.sleep(wait)
                if self._quitting:
                    return
                try:
                    proc = await self._spawn(k)
                    break
                except OSError as exc:
                    log.error("%s", exc)
                    wait = min(wait * 2, RESTART_BACKOFF[1])

    async def stop(self) -> None:
        self._quitting = True
        await self.close_metrics()
        self.finish()
        live = [p for p in self.procs if p is not None and p.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in live:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._watchers:
            task.cancel()
        self.machine.remove_firewall()
        for socks in self.udp.values():
            for s in socks:
                s.close()
        for s in [*self.tcp.values(), *self.tls.values()]:
            s.close()
        for fd in self.queues:
            os.close(fd)
        if self.queues:
            log.info("gateway stopped")
        self.queues = []

    def reload(self) -> None:
        """SIGHUP: every worker reads the configuration file again, if it reads (a file that does
        not is refused here, once, and the workers keep theirs)."""
        if self.config.source is not None:
            try:
                load_gateway_config(self.config.source, self.config.private_key)
            except ConfigError as exc:
                log.error("reload refused, the running configuration stays: %s", exc)
                return
        for proc in self.procs:
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGHUP)

    # ------------------------------------------------------------ the core's side (none here)

    def pump(self, now: float) -> None:
        pass

    def next_deadline(self) -> float | None:
        return None

    def on_timer(self, now: float) -> None:
        pass

    def after_compiled(self) -> None:
        pass

    # ------------------------------------------------------------ figures

    def status(self) -> dict[str, object]:
        """The workers' figures summed (from the last query: see ``_on_status``)."""
        return self._merged or self._collect()

    def _collect(self) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        for k in range(self.n):
            part = _query(worker_status_socket(self.config.status_socket, k))
            if part is not None:
                parts.append(part)
        merged = merge(parts)
        merged["role"] = "gateway"
        merged["uptime"] = round(time.time() - self.started, 1)
        merged["workers"] = self.n
        merged["workers_running"] = len(parts)
        merged["worker_restarts"] = sum(self.restarts)
        merged["worker_pids"] = [p.pid if p is not None else 0 for p in self.procs]
        self._merged = merged
        return merged

    async def _on_status(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            merged = await asyncio.get_running_loop().run_in_executor(None, self._collect)
            writer.write(json.dumps(merged).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    def summary(self) -> str:
        status = self._collect()
        counters = status.get("counters", {})
        refused = sum(v for k, v in counters.items() if k.startswith("refused-"))
        return (
            f"{status.get('sessions', 0)} sessions on {status['workers_running']}/{self.n} workers, "
            f"{counters.get('sessions-established', 0)} established, {refused} refused"
        )

    def metrics(self) -> Iterable[Metric]:
        from veilgate.gateway.daemon import gateway_metrics  # noqa: PLC0415 - the daemon imports this module

        status = self._collect()
        if not status.get("workers_running"):
            return ()
        return gateway_metrics(status)


def _listening(host: str, port: int, what: str) -> socket.socket:
    try:
        return listening_socket(host, port)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {what} {host} port {port}: {exc.strerror}") from None


def _query(path: Path) -> dict[str, Any] | None:
    """One worker's status, or None if it does not answer."""
    try:
        return query_status(path, STATUS_TIMEOUT)
    except (OSError, ValueError):
        return None


ALL_OF = frozenset({"gso", "gro"})
"""Flags true of the gateway only when true of every worker (any other flag: of any worker)."""


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Status dictionaries summed: numbers added, flags or'ed (``ALL_OF``: and'ed), nested
    dictionaries merged the same way, anything else taken from the first that has it."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key not in out:
                out[key] = merge([value]) if isinstance(value, dict) else value
            elif isinstance(value, bool):
                out[key] = (out[key] and value) if key in ALL_OF else (out[key] or value)
            elif isinstance(value, (int, float)):
                out[key] = out[key] + value
            elif isinstance(value, dict):
                out[key] = merge([out[key], value])
    return out


# ---------------------------------------------------------------- the worker process


class _ReadyLine(Notifier):
    """A worker's notifications: "ready" on standard output for the supervisor, nothing else."""

    def __init__(self) -> None:
        super().__init__(None)

    def send(self, **fields: object) -> None:
        if fields.get("READY") == 1 and not getattr(self, "_said", False):
            self._said = True
            sys.stdout.write("ready\n")
            sys.stdout.flush()


def worker_main() -> int:
    from veilgate.gateway.daemon import Gateway  # noqa: PLC0415 - the daemon imports this module
    from veilgate.systemd.privileges import die_with_parent, run_as  # noqa: PLC0415
    from veilgate.transport import loop as event_loop  # noqa: PLC0415

    die_with_parent(signal.SIGTERM)  # the worker ends when its supervisor does
    spec = json.loads(sys.stdin.read())
    logs.setup(spec["log_level"], spec["log_format"])
    config = load_gateway_config(spec["config"], bytes.fromhex(spec["private_key"]))
    config.log_level, config.log_format = spec["log_level"], spec["log_format"]
    p = spec["place"]
    place = WorkerPlace(
        Shard(p["k"], p["n"]), p["tun_fd"], p["udp"], p["tcp"], p["tls"], p.get("vnet", False)
    )
    # The supervisor started as root: the worker drops to the configured user itself. A worker the
    # supervisor starts again after its own drop already runs as that user.
    user = (
        run_as(config.user, set(), (config.status_socket.parent,), source=config.source, field="gateway.user")
        if os.geteuid() == 0
        else None
    )
    gateway = Gateway(config, place=place)
    gateway.service = Service(
        f"gateway worker {place.shard.k}", user, gateway.reload, gateway.summary, _ReadyLine()
    )
    event_loop.run(gateway.run())
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())


__all__ = ["Supervisor", "merge", "worker_count", "worker_main"]
