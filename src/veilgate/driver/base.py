"""The daemon skeleton both sides share, after aioquic's thin asyncio protocol around its core.

A subclass supplies its core's side of four things: ``start``/``stop`` (sockets, TUN, system
state), ``pump`` (what to do with the core's datagrams and events after any input),
``next_deadline``/``on_timer`` (its timers) and ``status`` (aggregate figures). Everything else is
here: running until SIGTERM or SIGINT, one asyncio timer armed at the earliest deadline, the
readers registered on the loop (directly, or served by the compiled data path), and the status
socket that answers one JSON line per connection.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veilgate import fastpath
from veilgate.driver.host import Host, LinuxHost, Tun
from veilgate.monitor.metrics import Metric, MetricsServer
from veilgate.systemd.notify import Service
from veilgate.transport.loop import add_compiled_reader, add_data_reader, remove_data_reader


def total(*parts: Mapping[str, int]) -> dict[str, int]:
    """Counters summed by name (unlike ``Counter`` addition, names at zero stay listed)."""
    out: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            out[key] = out.get(key, 0) + value
    return out


@dataclass(frozen=True)
class Runtime:
    """What a daemon runs on: its clock, the machine it changes, its environment. Tests pass fakes."""

    clock: Callable[[], float] = time.monotonic
    host: Host = field(default_factory=LinuxHost)
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)


class Driver(abc.ABC):
    """Lifecycle, timer, event pump and status socket of a daemon around a sans-IO core."""

    def __init__(self, runtime: Runtime | None) -> None:
        runtime = runtime or Runtime()
        self.clock = clock = runtime.clock
        self.host = runtime.host
        self.started = time.time()
        self.compiled_wanted = clock is time.monotonic and fastpath.wanted(runtime.environ)
        """Whether to run the compiled data path: built, not turned off in the environment, and on
        the clock it reads (CLOCK_MONOTONIC; a test's clock keeps the pure-Python path)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._status_server: asyncio.AbstractServer | None = None
        self._status_path: Path | None = None
        self._watched: list[int] = []
        self._metrics: MetricsServer | None = None
        self.tun: Tun | None = None
        self.service: Service | None = None
        """Under a service manager (``run_gateway``, ``run_client``): the privilege drop, readiness,
        watchdog and reload once ``start`` is done."""

    # ------------------------------------------------------------ what a side supplies

    @abc.abstractmethod
    async def start(self) -> None:
        """Open sockets and devices and start the core (call ``begin`` first)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Undo ``start`` (call ``finish`` once nothing more is to be sent)."""

    @abc.abstractmethod
    def pump(self, now: float) -> None:
        """Send what the core queued and handle its events, after any input or timer."""

    @abc.abstractmethod
    def next_deadline(self) -> float | None:
        """The earliest time the core (or a path manager) wants ``on_timer`` called."""

    @abc.abstractmethod
    def on_timer(self, now: float) -> None:
        """A deadline passed."""

    @abc.abstractmethod
    def status(self) -> dict[str, object]:
        """Aggregate figures for the status socket."""

    def data_path(self, compiled: bool) -> str:
        """Which data path runs and why, for the start-up log (the pure-Python one is slower)."""
        if compiled:
            return "compiled (veilgate.fastpath)"
        if not fastpath.BUILT:
            why = "the compiled module is not built (no C compiler or headers when installed)"
        elif self.clock is not time.monotonic:
            why = "the daemon runs on a test clock"
        elif not self.compiled_wanted:
            why = f"{fastpath.ENV}=0 in the environment"
        else:
            why = "the event loop cannot serve compiled readers"
        return f"pure Python, about half the throughput: {why}"

    # ------------------------------------------------------------ lifecycle

    def begin(self) -> asyncio.AbstractEventLoop:
        """The first step of ``start``: bind to the running loop."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        return loop

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT (or ``request_stop``), stop."""
        await self.start()
        loop = asyncio.get_running_loop()
        assert self._stopping is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        try:
            if self.service is not None:
                self.service.started(loop)
            await self._stopping.wait()
        finally:
            if self.service is not None:
                self.service.stopping()
            await self.stop()

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def open_tun(self, name: str, mtu: int, *, vnet: bool = False) -> Tun:
        """Create the daemon's TUN device (``finish`` closes it); ``vnet``: with the virtio-net
        header, where the kernel takes it (``Tun.vnet`` says)."""
        self.tun = self.host.open_tun(name, mtu, vnet=vnet)
        return self.tun

    def finish(self) -> None:
        """The first step of ``stop`` once nothing more is sent: the timer, the readers, the TUN
        device and the status socket go (the daemon's sockets may close after)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = None
        for fd in list(self._watched):
            self.unwatch(fd)
        if self.tun is not None:
            self.tun.close()
            self.tun = None
        self.close_status()

    # ------------------------------------------------------------ readers

    def watch(self, fd: int, callback: Callable[..., object], *args: Any) -> None:
        """Call ``callback(*args)`` whenever ``fd`` is readable, straight from the poll."""
        assert self._loop is not None
        add_data_reader(self._loop, fd, callback, *args)
        self._watched.append(fd)

    def watch_compiled(self, fd: int, path: fastpath.DataPath, kind: int, sock: int = 0) -> bool:
        """Serve ``fd`` with the compiled loop of ``path``, then ``after_compiled``; False if the loop
        cannot (the caller then uses ``watch``)."""
        assert self._loop is not None
        if not add_compiled_reader(self._loop, fd, path, kind, sock, self.after_compiled):
            return False
        self._watched.append(fd)
        return True

    def unwatch(self, fd: int) -> None:
        if fd in self._watched:
            self._watched.remove(fd)
            if self._loop is not None:
                remove_data_reader(self._loop, fd)

    @abc.abstractmethod
    def after_compiled(self) -> None:
        """After a compiled loop ran: account for what it did, handle what it passed on."""

    # ------------------------------------------------------------ the pump and the timer

    def after_io(self, now: float) -> None:
        """After any input: let the core's output out, then follow its next deadline."""
        self.pump(now)
        self.arm_timer()

    def arm_timer(self) -> None:
        at = self.next_deadline()
        if self._timer_at is not None and (at is None or self._timer_at <= at):
            # The armed timer comes first (deadlines such as a keepalive move later with every
            # packet): let it fire, find nothing due, and re-arm then, instead of re-arming per packet.
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None and self._loop is not None:
            self._timer = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.clock()
        self.on_timer(now)
        self.after_io(now)

    # ------------------------------------------------------------ the status socket

    async def serve_status(self, path: Path) -> None:
        """Answer ``status()`` as one JSON line on a Unix socket only root can open."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._status_server = await asyncio.start_unix_server(self._on_status, path=str(path))
        self._status_path = path
        os.chmod(path, 0o600)

    def close_status(self) -> None:
        if self._status_server is not None:
            self._status_server.close()
            self._status_server = None
        if self._status_path is not None:
            # OSError: after the privilege drop a socket in a folder that was not handed over (one
            # anyone may write to) stays; the next start replaces it.
            with contextlib.suppress(OSError):
                self._status_path.unlink()
            self._status_path = None

    async def _on_status(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(self.status()).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    # ------------------------------------------------------------ the metrics endpoint

    def metrics(self) -> Iterable[Metric]:
        """Aggregate figures for the metrics endpoint, built from the daemon's own counters."""
        return ()

    async def serve_metrics(self, address: tuple[str, int] | None) -> None:
        """Answer ``metrics()`` on ``address`` (none: no endpoint); ``close_metrics`` undoes it."""
        if address is not None:
            server = MetricsServer(address, self.metrics)
            await server.start()
            self._metrics = server

    async def close_metrics(self) -> None:
        if self._metrics is not None:
            server, self._metrics = self._metrics, None
            await server.stop()
