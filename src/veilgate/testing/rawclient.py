"""A bare client for tests that play an attacker: the sans-IO core over one UDP socket, no TUN.

It does what a real client's core does on the wire and nothing else, so a test can make it
misbehave in ways the daemon never would (reuse a credential, rotate to a stolen key) and
watch a real gateway answer.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

from veilgate.protocol.client import ClientProtocol
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.events import Event


class RawClient:
    def __init__(
        self, gateway: tuple[str, int], gateway_public: bytes, key: KeyPair, credential: bytes
    ) -> None:
        family = socket.AF_INET6 if ":" in gateway[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.connect(gateway)
        self.core = ClientProtocol(key, gateway_public, credential)
        self.events: list[Event] = []
        self.packets: list[bytes] = []
        """IP packets the gateway sent through the tunnel, in order."""

    def close(self) -> None:
        self.sock.close()

    def connect(self, timeout: float) -> bool:
        """Handshake; True once the gateway confirmed the session within ``timeout`` seconds."""
        self.core.connect(time.monotonic())
        return self.pump(timeout, lambda: self.core.connected)

    def rotate(self, key: KeyPair, credential: bytes, timeout: float) -> bool:
        """Rotate to ``key`` inside the session; True once the gateway confirmed the new keypair."""
        before = self.core.last_handshake
        self.core.rotate_identity(key, credential, time.monotonic())
        return self.pump(timeout, lambda: self.core.last_handshake != before)

    def pump(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Run the core against the socket for up to ``seconds``, or until ``until()`` holds."""
        deadline = time.monotonic() + seconds
        while True:
            self._flush()
            if until is not None and until():
                return True
            now = time.monotonic()
            if now >= deadline:
                return until is None
            timer = self.core.get_timer()
            wait = min(deadline, timer if timer is not None else deadline) - now
            self.sock.settimeout(max(0.001, wait))
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                data = b""
            except OSError:  # e.g. an ICMP error reported on the socket
                data = b""
            now = time.monotonic()
            if data:
                packet = self.core.receive_datagram(data, now)
                if packet is not None:
                    self.packets.append(packet)
            timer = self.core.get_timer()
            if timer is not None and timer <= now:
                self.core.handle_timer(now)

    def send_packet(self, packet: bytes) -> None:
        """Seal an IP packet into the tunnel (sent with the next ``pump``)."""
        data = self.core.send_packet(packet, time.monotonic())
        if data is not None:
            with contextlib.suppress(OSError):
                self.sock.send(data)

    def close_session(self) -> None:
        """Tell the gateway to end the session now (as a client does on exit)."""
        bye = self.core.close(time.monotonic())
        if bye is not None:
            with contextlib.suppress(OSError):
                self.sock.send(bye)

    def _flush(self) -> None:
        for data in self.core.datagrams_to_send():
            with contextlib.suppress(OSError):  # e.g. an ICMP error reported on the socket
                self.sock.send(data)
        while (event := self.core.next_event()) is not None:
            self.events.append(event)
