"""Path selection between UDP and the stream carriers (TLS, plain TCP), sans-IO.

The protocol core does not care which path carries its datagrams; this small
state machine decides, from what the driver observes, which path to use. There
are two slots: UDP, and one stream connection, whose carrier is taken in
order from ``streams`` (by default TLS, then plain TCP where configured):

- Start on UDP. If no handshake response came back within ``udp_grace``
  seconds, race the stream: send the same handshake message on it too, and
  keep the path whose response arrives first.
- On UDP, when the core reports a stalled path (data sent, nothing
  authenticated back for a few seconds), move to the stream with the same session.
- On the stream, probe UDP every ``reprobe_interval`` seconds with an
  authenticated probe; when a probe is answered over UDP, move back to UDP (the
  driver then sends a keepalive over UDP so the gateway follows at once) and
  close the stream after ``tcp_linger`` seconds.
- When a stream connect fails, or the stream stalls, the next carrier in
  ``streams`` is tried (TLS, then plain TCP, then TLS again); when an open
  stream closes it is reconnected on the same carrier, with backoff, and UDP
  is tried at the same time.

It takes observations and ``now`` and returns :class:`Action` values.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

UDP = "udp"
TLS = "tls"
TCP = "tcp"
STREAMS = (TLS, TCP)
MODES = ("auto", UDP, TLS, TCP)

_INF = float("inf")


class Act(enum.Enum):
    SEND_HANDSHAKE = "send-handshake"
    """Send the core's current handshake message on ``path``."""
    OPEN_STREAM = "open-stream"
    """Connect the stream carrier ``path`` (``tls`` or ``tcp``)."""
    CLOSE_STREAM = "close-stream"
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


SWITCHES_KEPT = 64
"""How many recent path changes status shows (a laptop on a flaky network changes paths for weeks)."""


class PathManager:
    def __init__(
        self,
        *,
        mode: str = "auto",
        streams: tuple[str, ...] = (TCP,),
        udp_grace: float = 0.3,
        reprobe_interval: float = 10.0,
        tcp_linger: float = 2.0,
        tcp_retry_max: float = 8.0,
    ) -> None:
        """``streams``: the stream carriers ``auto`` falls back to, in order; a forced ``tls`` or
        ``tcp`` mode uses that carrier alone."""
        if mode not in MODES:
            raise ValueError(f"mode must be auto, udp, tls or tcp, not {mode!r}")
        if mode in STREAMS:
            streams = (mode,)
        if any(s not in STREAMS for s in streams):
            raise ValueError(f"streams must be tls and/or tcp, not {streams!r}")
        self.mode = mode
        self.streams = streams if mode != UDP else ()
        self.udp_grace = udp_grace
        self.reprobe_interval = reprobe_interval
        self.tcp_linger = tcp_linger
        self.tcp_retry_max = tcp_retry_max
        self.active: str | None = None
        self.switches: deque[Switch] = deque(maxlen=SWITCHES_KEPT)
        """The most recent path changes."""
        self.switch_count = 0
        """Path changes since the start (the ``switches`` kept are the last of them)."""
        self.fallbacks = 0
        """Moves from UDP (or from no path yet, in ``auto``) to a stream carrier."""
        self.returns = 0
        """Moves from a stream carrier back to UDP."""
        self.stream_open = False
        self._stream_index = 0
        self._last = streams[0] if mode in STREAMS else UDP
        self._probes: dict[int, str] = {}
        self._race_at = _INF
        self._probe_at = _INF
        self._close_stream_at = _INF
        self._stream_retry_at = _INF
        self._stream_retry = 0.5
        self._searching_since: float | None = None
        self._why = "start"

    @property
    def stream(self) -> str:
        """The stream carrier in use or tried next."""
        return self.streams[self._stream_index] if self.streams else TCP

    @property
    def on_stream(self) -> bool:
        return self.active is not None and self.active != UDP

    @property
    def forced_stream(self) -> bool:
        return self.mode in STREAMS

    # ---- observations

    def start(self, now: float) -> list[Action]:
        self._searching_since = now
        if self.forced_stream:
            return self._open_stream()
        self._race_at = now + self.udp_grace if self.mode == "auto" else _INF
        return []  # the first handshake message goes out on UDP with the core's other datagrams

    def handshake_started(self, now: float) -> list[Action]:
        """The core began a new handshake (first, retry, rekey or after a stall): where to send it.

        On a stream it goes on that stream. Otherwise it races on every open path: on UDP (unless a
        stream is forced) and on the stream once open, as before a path is chosen, and on UDP after
        a rekey stalled there (the stall opened the stream, see ``stalled``; a flood can drop
        full-size datagrams while small ones pass)."""
        if self.on_stream:
            return [Action(Act.SEND_HANDSHAKE, self.stream)] if self.stream_open else []
        actions = [] if self.forced_stream else [Action(Act.SEND_HANDSHAKE, UDP)]
        if self.stream_open:
            actions.append(Action(Act.SEND_HANDSHAKE, self.stream))
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
            self._last_old = self.active
            self.active = None
            if not self.stream_open:
                return self._open_stream()
            return [Action(Act.SEND_HANDSHAKE, self.stream)]
        # Stalled on a stream: reconnect on the next stream carrier and try UDP as well.
        self._why = f"{self.active} stalled"
        self._searching_since = now - silent_for
        self._last_old = self.active
        self.active = None
        self.stream_open = False
        self._next_stream()
        actions = [Action(Act.CLOSE_STREAM), *self._open_stream()]
        if not self.forced_stream:
            actions.append(Action(Act.SEND_HANDSHAKE, UDP))
        return actions

    def stream_connected(self, now: float) -> list[Action]:
        self.stream_open = True
        self._stream_retry = 0.5
        self._stream_retry_at = _INF
        if self.on_stream:
            # A new connection under an active stream path (the network changed): an authenticated
            # keepalive moves the gateway to it at once.
            return [Action(Act.SEND_HANDSHAKE, self.stream), Action(Act.SEND_KEEPALIVE, self.stream)]
        if self.active is None:
            return [Action(Act.SEND_HANDSHAKE, self.stream)]
        return []

    def network_changed(self, now: float) -> list[Action]:
        """The client's network changed (address, interface or route) and its UDP socket now sends
        from the new address: tell the gateway on the active path, reconnect the stream if it is
        open (its connection is bound to the old address)."""
        actions: list[Action] = []
        if self.stream_open or self.on_stream:
            self.stream_open = False
            actions.append(Action(Act.CLOSE_STREAM))
            if self.on_stream:
                actions += self._open_stream()
        if self.active == UDP:
            actions.append(Action(Act.SEND_KEEPALIVE, UDP))
        elif self.active is None and not self.forced_stream:
            actions.append(Action(Act.SEND_HANDSHAKE, UDP))
        return actions

    def stream_failed(self, now: float, *, was_open: bool = True) -> list[Action]:
        """A stream connect failed (``was_open`` False: the next carrier is tried) or an open
        connection closed (reconnected on the same carrier)."""
        self.stream_open = False
        if not was_open:
            self._next_stream()
        if self.on_stream:
            self._why = f"{self.active} closed"
            self._searching_since = now
            self._last_old = self.active
            self.active = None
        if self.active is None and self.mode != UDP:
            self._stream_retry_at = now + self._stream_retry
            self._stream_retry = min(self._stream_retry * 2, self.tcp_retry_max)
            return [] if self.forced_stream else [Action(Act.SEND_HANDSHAKE, UDP)]
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
        if path != UDP or not self.on_stream or self.mode != "auto":
            return []
        self._why = "udp works again"
        self._searching_since = self._probe_sent_at
        self._last_old = self.active
        self._set_active(UDP, now)
        self._close_stream_at = now + self.tcp_linger
        return [Action(Act.SEND_KEEPALIVE, UDP)]

    # ---- timers

    def get_timer(self) -> float | None:
        t = min(self._race_at, self._probe_at, self._close_stream_at, self._stream_retry_at)
        return None if t == _INF else t

    def handle_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if now >= self._race_at:
            self._race_at = _INF
            if self.active is None and not self.stream_open:
                actions += self._open_stream()
        if now >= self._stream_retry_at:
            self._stream_retry_at = _INF
            if not self.stream_open and (self.active is None or self.on_stream):
                actions += self._open_stream()
        if now >= self._probe_at:
            self._probe_at = now + self.reprobe_interval if self.on_stream else _INF
            if self.on_stream:
                self._probe_sent_at = now
                actions.append(Action(Act.PROBE_UDP, UDP))
        if now >= self._close_stream_at:
            self._close_stream_at = _INF
            if self.active == UDP and self.stream_open:
                self.stream_open = False
                actions.append(Action(Act.CLOSE_STREAM))
        return actions

    # ---- internals

    _last_old: str | None = None
    _probe_sent_at: float = 0.0

    def _open_stream(self) -> list[Action]:
        if not self.streams:
            return []
        return [Action(Act.OPEN_STREAM, self.stream)]

    def _next_stream(self) -> None:
        if self.streams:
            self._stream_index = (self._stream_index + 1) % len(self.streams)

    def _set_active(self, path: str, now: float) -> None:
        since = self._searching_since if self._searching_since is not None else now
        self.switches.append(Switch(now, self._last_old, path, self._why, now - since))
        self.switch_count += 1
        if path in STREAMS and self.mode == "auto":
            self.fallbacks += 1
        elif path == UDP and self._last_old in STREAMS:
            self.returns += 1
        self.active = path
        self._searching_since = None
        self._race_at = _INF
        if path != UDP and self.mode == "auto":
            self._probe_at = now + self.reprobe_interval
        else:
            self._probe_at = _INF
