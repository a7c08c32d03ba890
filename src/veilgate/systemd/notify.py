"""Running under systemd: readiness, watchdog and status notifications, reload, the privilege drop.

The notification protocol is one datagram per message on the Unix socket named by NOTIFY_SOCKET
(a path, or an abstract name written with a leading ``@``), lines of ``KEY=value``. It takes a few
lines over ``socket``; the PyPI packages for it (sdnotify) have not been kept up for years.

``Service`` ties a daemon to it: after the daemon's sockets, TUN device and firewall are up it drops
privileges (``veilgate.systemd.privileges``), answers SIGHUP by re-reading the configuration, sends
WATCHDOG=1 from the event loop at half the watchdog interval (a hung loop sends none, and systemd
restarts the daemon), and STATUS= lines of aggregate figures only (never an address or a key).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
from collections.abc import Callable, MutableMapping

from veilgate.systemd.privileges import RunAs, drop_privileges
from veilgate.tun import netlink

log = logging.getLogger("veilgate.systemd")

STATUS_EVERY = 10.0
"""Seconds between two STATUS= updates when no watchdog asks for a faster tick."""


class Notifier:
    """Sends sd_notify messages to the socket named in NOTIFY_SOCKET (by systemd, or a test); without
    one, a no-op."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog = watchdog_usec / 1e6 if watchdog_usec else None
        """The watchdog interval in seconds, or None when systemd runs no watchdog for this process."""
        self._sock: socket.socket | None = None
        if address:
            target = "\0" + address[1:] if address.startswith("@") else address
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                # Connected now, while the daemon may still open any path: the socket stays usable
                # after the privilege drop.
                sock.connect(target)
            except OSError as exc:
                sock.close()
                log.warning("cannot reach the notification socket %s: %s", address, exc.strerror or exc)
            else:
                self._sock = sock

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """From NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID, which are then removed from the
        environment (the commands the daemon runs, such as nft, are no services to notify)."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None)
        usec_text = env.pop("WATCHDOG_USEC", None)
        pid_text = env.pop("WATCHDOG_PID", None)
        usec: int | None = None
        if usec_text and (not pid_text or pid_text == str(os.getpid())):
            with contextlib.suppress(ValueError):
                usec = int(usec_text) if int(usec_text) > 0 else None
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: object) -> None:
        """One message; ``send(READY=1, STATUS="...")`` sends ``READY=1\\nSTATUS=...``."""
        if self._sock is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._sock.send(message.encode())
        except OSError as exc:
            log.debug("notification not sent: %s", exc.strerror or exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def changed_fields(old: object, new: object, live: set[str], name: str) -> dict[str, object]:
    """Compare two configurations (dataclasses): the changed fields in ``live``, to apply now.

    Each other changed field gets one warning line naming it (never its value: keys are fields too).
    """
    applied: dict[str, object] = {}
    for f in dataclasses.fields(old):  # type: ignore[arg-type]
        if f.name == "source":
            continue
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before == after:
            continue
        if f.name in live:
            applied[f.name] = after
        else:
            log.warning("%s changed: restart to apply (veilgate %s keeps the running value)", f.name, name)
    return applied


def set_log_level(level: str) -> None:
    logging.getLogger("veilgate").setLevel(level.upper())


@dataclasses.dataclass
class Service:
    """A daemon's side of systemd: what to drop to, how to reload, what to report.

    ``reload`` re-reads the configuration and applies what can change at run time (it logs what it
    could not). ``summary`` is the STATUS= line: aggregate figures, nothing that names a client.
    """

    name: str
    run_as: RunAs | None
    reload: Callable[[], None]
    summary: Callable[[], str]
    notifier: Notifier = dataclasses.field(default_factory=Notifier.from_environment)
    ready_at_start: bool = True
    """False for the client: it is ready once its tunnel has an address (``ready``)."""
    _ready: bool = False
    _tick: asyncio.TimerHandle | None = None
    _status: str = ""

    def started(self, loop: asyncio.AbstractEventLoop) -> None:
        """Everything the daemon needs from root is open: drop, then serve SIGHUP and the watchdog."""
        if self.run_as is not None:
            drop_privileges(self.run_as)
            netlink.renew_worker()
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        self._schedule(loop)
        if self.ready_at_start:
            self.ready()

    def ready(self) -> None:
        """READY=1, once (the first time the daemon serves)."""
        if self._ready:
            return
        self._ready = True
        self._status = self.summary()
        self.notifier.send(READY=1, STATUS=self._status)
        log.debug("veilgate %s ready", self.name)

    def stopping(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        self.notifier.send(STOPPING=1, STATUS="stopping")

    def _on_hup(self) -> None:
        self.notifier.send(RELOADING=1, STATUS="reloading the configuration")
        try:
            self.reload()
        finally:
            self._status = self.summary()
            if self._ready:
                self.notifier.send(READY=1, STATUS=self._status)
            else:
                self.notifier.send(STATUS=self._status)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        watchdog = self.notifier.watchdog
        every = min(watchdog / 2, STATUS_EVERY) if watchdog else STATUS_EVERY
        self._tick = loop.call_later(every, self._on_tick, loop)

    def _on_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """From the event loop itself: a loop that hangs sends no WATCHDOG=1 and systemd restarts it."""
        fields: dict[str, object] = {}
        if self.notifier.watchdog:
            fields["WATCHDOG"] = 1
        status = self.summary()
        if status != self._status:
            self._status = fields["STATUS"] = status
        if fields:
            self.notifier.send(**fields)
        self._schedule(loop)


__all__ = ["Notifier", "Service", "changed_fields", "set_log_level"]
