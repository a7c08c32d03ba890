"""Path selection between UDP and TCP, sans-IO.

The protocol core does not care which path carries its datagrams; this small
state machine decides, from what the driver observes, which path to use:

- Start on UDP. If no handshake response came back within ``udp_grace``
  seconds, race TCP: send the same handshake message on TCP too, and keep the
  path whose response arrives first.
- On UDP, when the core reports a stalled path (data sent, nothing
  authenticated back for a few seconds), move to TCP with the same session.
- On TCP, probe UDP every ``reprobe_interval`` seconds with an authenticated
  probe; when a probe is answered over UDP, move back to UDP (the driver then
  sends a keepalive over UDP so the gateway follows at once) and close TCP
  after ``tcp_linger`` seconds.
- When TCP breaks (connection closed), reconnect it with backoff if it is the
  active path, and try UDP at the same time.

It takes observations and ``now`` and returns :class:`Action` values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

UDP = "udp"
TCP = "tcp"

_INF = float("inf")


class Act(enum.Enum):
    SEND_HANDSHAKE = "send-handshake"
    """Send the core's current handshake message on ``path``."""
    OPEN_TCP = "open-tcp"
    CLOSE_TCP = "close-tcp"
    PROBE_UDP = "probe-udp"
    SEND_KEEPALIVE = "send-keepalive"
    """Send an authenticated keepalive on ``path`` (to move the gateway there)."""


@dataclass(frozen=True)
class Action:
    act: Act
    path: str = ""


@dataclass(frozen=True)
class Switch:
    """A change of the active path, for status and logs."""

    at: float
    old: str | None
    new: str
    why: str
    took: float


class PathManager:
    def __init__(
        self,
        *,
        mode: str = "auto",
        udp_grace: float = 0.3,
        reprobe_interval: float = 10.0,
        tcp_linger: float = 2.0,
        tcp_retry_max: float = 8.0,
    ) -> None:
        if mode not in ("auto", UDP, TCP):
            raise ValueError(f"mode must be auto, udp or tcp, not {mode!r}")
        self.mode = mode
        self.udp_grace = udp_grace
        self.reprobe_interval = reprobe_interval
        self.tcp_linger = tcp_linger
        self.tcp_retry_max = tcp_retry_max
        self.active: str | None = None
        self.switches: list[Switch] = []
        self.tcp_open = False
        self._last = TCP if mode == TCP else UDP
        self._probes: dict[int, str] = {}
        self._race_at = _INF
        self._probe_at = _INF
        self._close_tcp_at = _INF
        self._tcp_retry_at = _INF
        self._tcp_retry = 0.5
        self._searching_since: float | None = None
        self._why = "start"

    # ---- observations

    def start(self, now: float) -> list[Action]:
        self._searching_since = now
        if self.mode == TCP:
            return self._open_tcp()
        self._race_at = now + self.udp_grace if self.mode == "auto" else _INF
        return []  # the first handshake message goes out on UDP with the core's other datagrams

    def handshake_started(self, now: float) -> list[Action]:
        """The core began a new handshake (first, retry, rekey or after a stall): where to send it.

        On TCP it goes on TCP. Otherwise it races on every open path: on UDP (unless TCP is forced)
        and on TCP once open, as before a path is chosen, and on UDP after a rekey stalled there
        (the stall opened TCP, see ``stalled``; a flood can drop full-size datagrams while small
        ones pass)."""
        if self.active == TCP:
            return [Action(Act.SEND_HANDSHAKE, TCP)] if self.tcp_open else []
        actions = [] if self.mode == TCP else [Action(Act.SEND_HANDSHAKE, UDP)]
        if self.tcp_open:
            actions.append(Action(Act.SEND_HANDSHAKE, TCP))
        return actions

    @property
    def current(self) -> str:
        """The path other datagrams go on: the active one, else the last that carried a response."""
        return self.active or self._last

    def response_on(self, path: str, now: float) -> None:
        """A handshake response or an authenticated packet arrived on ``path``."""
        if self.active is None:
            self._set_active(path, now)
        self._last = self.active or path

    def stalled(self, now: float, silent_for: float = 0.0) -> list[Action]:
        """The active path stalled; it has been silent for ``silent_for`` seconds (counted in the switch)."""
        if self.mode == UDP:
            return []
        if self.active == UDP or self.active is None:
            self._why = "udp stalled"
            self._searching_since = now - silent_for
            old = self.active
            self.active = None
            self._last_old = old
            actions = self._open_tcp() if not self.tcp_open else [Action(Act.SEND_HANDSHAKE, TCP)]
            return actions
        # Stalled on TCP: reconnect TCP and try UDP as well.
        self._why = "tcp stalled"
        self._searching_since = now - silent_for
        self._last_old = self.active
        self.active = None
        return [Action(Act.CLOSE_TCP), *self._open_tcp(), Action(Act.SEND_HANDSHAKE, UDP)]

    def tcp_connected(self, now: float) -> list[Action]:
        self.tcp_open = True
        self._tcp_retry = 0.5
        self._tcp_retry_at = _INF
        if self.active == TCP:
            # A new connection under an active TCP path (the network changed): an authenticated
            # keepalive moves the gateway to it at once.
            return [Action(Act.SEND_HANDSHAKE, TCP), Action(Act.SEND_KEEPALIVE, TCP)]
        if self.active is None:
            return [Action(Act.SEND_HANDSHAKE, TCP)]
        return []

    def network_changed(self, now: float) -> list[Action]:
        """The client's network changed (address, interface or route) and its UDP socket now sends
        from the new address: tell the gateway on the active path, reconnect TCP if it is open (its
        connection is bound to the old address)."""
        actions: list[Action] = []
        if self.tcp_open or self.active == TCP:
            self.tcp_open = False
            actions.append(Action(Act.CLOSE_TCP))
            if self.active == TCP:
                actions += self._open_tcp()
        if self.active == UDP:
            actions.append(Action(Act.SEND_KEEPALIVE, UDP))
        elif self.active is None and self.mode != TCP:
            actions.append(Action(Act.SEND_HANDSHAKE, UDP))
        return actions

    def tcp_failed(self, now: float) -> list[Action]:
        """A TCP connect failed or an open connection closed."""
        self.tcp_open = False
        if self.active == TCP:
            self._why = "tcp closed"
            self._searching_since = now
            self._last_old = TCP
            self.active = None
        if self.active is None and self.mode != UDP:
            self._tcp_retry_at = now + self._tcp_retry
            self._tcp_retry = min(self._tcp_retry * 2, self.tcp_retry_max)
            return [] if self.mode == TCP else [Action(Act.SEND_HANDSHAKE, UDP)]
        return []

    def probe_sent(self, probe_id: int, path: str) -> None:
        """An authenticated probe went out on ``path`` (the driver sends it for ``PROBE_UDP``)."""
        self._probes[probe_id] = path
        if len(self._probes) > 64:
            del self._probes[next(iter(self._probes))]

    def probe_reply(self, probe_id: int, now: float) -> list[Action]:
        """The core reported a probe answered: where it went decides what follows."""
        path = self._probes.pop(probe_id, None)
        return [] if path is None else self.probe_answered(path, now)

    def probe_answered(self, path: str, now: float) -> list[Action]:
        if path != UDP or self.active != TCP or self.mode != "auto":
            return []
        self._why = "udp works again"
        self._searching_since = self._probe_sent_at
        self._last_old = TCP
        self._set_active(UDP, now)
        self._close_tcp_at = now + self.tcp_linger
        return [Action(Act.SEND_KEEPALIVE, UDP)]

    # ---- timers

    def get_timer(self) -> float | None:
        t = min(self._race_at, self._probe_at, self._close_tcp_at, self._tcp_retry_at)
        return None if t == _INF else t

    def handle_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if now >= self._race_at:
            self._race_at = _INF
            if self.active is None and not self.tcp_open:
                actions += self._open_tcp()
        if now >= self._tcp_retry_at:
            self._tcp_retry_at = _INF
            if not self.tcp_open and (self.active in (None, TCP)):
                actions += self._open_tcp()
        if now >= self._probe_at:
            self._probe_at = now + self.reprobe_interval if self.active == TCP else _INF
            if self.active == TCP:
                self._probe_sent_at = now
                actions.append(Action(Act.PROBE_UDP, UDP))
        if now >= self._close_tcp_at:
            self._close_tcp_at = _INF
            if self.active == UDP and self.tcp_open:
                self.tcp_open = False
                actions.append(Action(Act.CLOSE_TCP))
        return actions

    # ---- internals

    _last_old: str | None = None
    _probe_sent_at: float = 0.0

    def _open_tcp(self) -> list[Action]:
        if self.mode == UDP:
            return []
        return [Action(Act.OPEN_TCP, TCP)]

    def _set_active(self, path: str, now: float) -> None:
        since = self._searching_since if self._searching_since is not None else now
        self.switches.append(Switch(now, self._last_old, path, self._why, now - since))
        self.active = path
        self._searching_since = None
        self._race_at = _INF
        if path == TCP and self.mode == "auto":
            self._probe_at = now + self.reprobe_interval
        else:
            self._probe_at = _INF
