"""In-memory network for the sans-IO core: a client and a gateway joined by a lossy, reordering link."""

from __future__ import annotations

import ipaddress
import os
import random
from dataclasses import dataclass, field

from veilgate import fastpath
from veilgate.fastpath.keypair import CompiledKeypair
from veilgate.protocol.client import ClientProtocol
from veilgate.protocol.control import TunnelConfig
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.errors import CredentialError
from veilgate.protocol.events import Event, SessionEstablished
from veilgate.protocol.gateway import GatewayProtocol
from veilgate.protocol.keypair import Keypair, KeypairFactory

KEYPAIR: KeypairFactory = CompiledKeypair if fastpath.wanted(os.environ) else Keypair
"""The keypairs ``Net``'s cores make, as a daemon's would (``VEILGATE_FASTPATH=0``: the pure-Python ones)."""


@dataclass(frozen=True)
class Addr:
    host: str
    port: int

    def cookie_bytes(self) -> bytes:
        return ipaddress.ip_address(self.host).packed + self.port.to_bytes(2, "big")


class AcceptAll:
    """A credential check that accepts a credential equal to the static key (for core tests)."""

    def verify(self, data: bytes, static_public: bytes, now: float) -> object:
        if data != b"ok:" + static_public:
            raise CredentialError("credential refused", "forged")
        return None


def ipv4_packet(src: str, dst: str, payload: bytes) -> bytes:
    total = 20 + len(payload)
    header = bytearray(20)
    header[0] = 0x45
    header[2:4] = total.to_bytes(2, "big")
    header[8] = 64
    header[9] = 17
    header[12:16] = ipaddress.IPv4Address(src).packed
    header[16:20] = ipaddress.IPv4Address(dst).packed
    return bytes(header) + payload


def ipv6_packet(src: str, dst: str, payload: bytes) -> bytes:
    header = bytearray(40)
    header[0] = 0x60
    header[4:6] = len(payload).to_bytes(2, "big")
    header[6] = 17
    header[7] = 64
    header[8:24] = ipaddress.IPv6Address(src).packed
    header[24:40] = ipaddress.IPv6Address(dst).packed
    return bytes(header) + payload


@dataclass
class Link:
    """One direction of the path: loss, duplication and reordering, seeded."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.01
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    blocked: bool = False

    def carry(self, data: bytes, now: float) -> list[tuple[float, bytes]]:
        if self.blocked or self.rng.random() < self.loss:
            return []
        at = now + self.delay
        if self.rng.random() < self.reorder:
            at += self.delay * self.rng.uniform(1, 5)
        out = [(at, data)]
        if self.rng.random() < self.duplicate:
            out.append((at + self.delay / 2, data))
        return out


class Net:
    """Runs a client and a gateway against a virtual clock."""

    CLIENT_ADDR = Addr("192.0.2.10", 40000)

    def __init__(
        self,
        *,
        gateway: GatewayProtocol | None = None,
        client_key: KeyPair | None = None,
        gateway_key: KeyPair | None = None,
        pinned_gateway_key: bytes | None = None,
        credential: bytes | None = None,
        up: Link | None = None,
        down: Link | None = None,
        auto_assign: bool = True,
        obfuscation: bool = False,
        keypair: KeypairFactory = KEYPAIR,
    ) -> None:
        self.now = 1000.0
        self.gateway_key = gateway_key or KeyPair.generate()
        self.gateway = gateway or GatewayProtocol(
            self.gateway_key, AcceptAll(), new_keypair=keypair, obfuscation=obfuscation
        )
        self.client_key = client_key or KeyPair.generate()
        self.client = ClientProtocol(
            self.client_key,
            pinned_gateway_key or self.gateway_key.public,
            credential if credential is not None else b"ok:" + self.client_key.public,
            new_keypair=keypair,
            obfuscation=obfuscation,
        )
        self.up = up or Link()
        self.down = down or Link()
        self.addr = self.CLIENT_ADDR
        self.auto_assign = auto_assign
        self.in_flight: list[tuple[float, int, bool, bytes]] = []
        self._seq = 0
        self.delivered_to_gateway: list[bytes] = []
        self.delivered_to_client: list[bytes] = []
        self.client_events: list[Event] = []
        self.gateway_events: list[Event] = []
        self.next_ip = 2

    def _queue(self, to_gateway: bool, data: bytes) -> None:
        link = self.up if to_gateway else self.down
        for at, d in link.carry(data, self.now):
            self._seq += 1
            self.in_flight.append((at, self._seq, to_gateway, d))

    def flush(self) -> None:
        for d in self.client.datagrams_to_send():
            self._queue(True, d)
        for d, addr in self.gateway.datagrams_to_send():
            assert addr == self.addr
            self._queue(False, d)
        while (e := self.client.next_event()) is not None:
            self.client_events.append(e)
        while (e := self.gateway.next_event()) is not None:
            self.gateway_events.append(e)
            if isinstance(e, SessionEstablished) and self.auto_assign:
                config = TunnelConfig(
                    ipv4=ipaddress.IPv4Interface(f"10.201.0.{self.next_ip}/16"),
                    ipv6=ipaddress.IPv6Interface(f"fd7a:201::{self.next_ip}/64"),
                    dns=(ipaddress.IPv4Address("10.201.0.1"),),
                    lease=3600,
                )
                self.next_ip += 1
                self.gateway.assign(e.session_id, config, self.now)
                for d, _ in self.gateway.datagrams_to_send():
                    self._queue(False, d)

    def step_to(self, t: float) -> None:
        """Advance the clock to ``t``, delivering datagrams and firing timers on the way."""
        for _ in range(1_000_000):
            self.flush()
            candidates = [t]
            if self.in_flight:
                candidates.append(min(x[0] for x in self.in_flight))
            for timer in (self.client.get_timer(), self.gateway.get_timer()):
                if timer is not None:
                    candidates.append(timer)
            nxt = min(candidates)
            if nxt > t:
                break
            self.now = max(self.now, nxt)
            due = sorted(x for x in self.in_flight if x[0] <= self.now)
            self.in_flight = [x for x in self.in_flight if x[0] > self.now]
            for _, _, to_gateway, data in due:
                if to_gateway:
                    out = self.gateway.receive_datagram(data, self.addr, self.now)
                    if out is not None:
                        self.delivered_to_gateway.append(out)
                else:
                    pkt = self.client.receive_datagram(data, self.now)
                    if pkt is not None:
                        self.delivered_to_client.append(pkt)
            timer = self.client.get_timer()
            if timer is not None and timer <= self.now:
                self.client.handle_timer(self.now)
            timer = self.gateway.get_timer()
            if timer is not None and timer <= self.now:
                self.gateway.handle_timer(self.now)
            if nxt == t and not due:
                self.flush()
                break
        else:
            raise AssertionError("the virtual clock made no progress: a timer is not advancing")
        self.now = t

    def run(self, seconds: float) -> None:
        self.step_to(self.now + seconds)

    def connect(self) -> None:
        self.client.connect(self.now)
        self.run(0.5)

    def client_send(self, packet: bytes) -> None:
        d = self.client.send_packet(packet, self.now)
        if d is not None:
            self._queue(True, d)

    def gateway_send(self, packet: bytes) -> None:
        session = next(iter(self.gateway.sessions.values()))
        out = self.gateway.send_packet(session, packet, self.now)
        if out is not None:
            self._queue(False, out[0])

    @property
    def client_ip(self) -> str:
        assert self.client.config is not None and self.client.config.ipv4 is not None
        return str(self.client.config.ipv4.ip)
