"""Fakes for running a whole daemon without root, after wireguard-go's tun/tuntest and conn/bindtest.

``FakeHost`` stands in for ``veilgate.driver.host.Host``: its TUN device is one end of a
SOCK_SEQPACKET socketpair (a real descriptor that keeps packet boundaries, so the daemon's readers,
epoll and the compiled data path work on it unchanged) and the test holds the other end as "the
system"; addresses, links and firewall rules are recorded instead of applied. The daemon's UDP and
TCP sockets stay real, on loopback.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veilgate.credentials import IssuerKey
from veilgate.gateway.config import GatewayConfig
from veilgate.protocol.crypto import KeyPair


class FakeTun:
    """A TUN device on a socketpair: the daemon gets ``fd``, the test reads and writes ``system``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.vnet = False
        self.system, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._daemon = daemon
        self.fd = daemon.fileno()
        os.set_blocking(self.fd, False)
        self.system.settimeout(5.0)
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self._daemon.close()

    def inject(self, packet: bytes) -> None:
        """A packet the system routes into the tunnel (the daemon reads it from its TUN)."""
        self.system.send(packet)

    def receive(self, timeout: float = 5.0) -> bytes:
        """The next packet the daemon wrote to its TUN (raises TimeoutError after ``timeout``)."""
        self.system.settimeout(timeout)
        return self.system.recv(65535)


@dataclass
class FakeFirewall:
    name: str
    bodies: list[str] = field(default_factory=list)
    deleted: bool = False

    def apply(self, body: str) -> None:
        self.bodies.append(body)

    def delete(self) -> None:
        self.deleted = True


@dataclass
class FakeHost:
    """Records what a daemon does to the machine; hands out ``FakeTun`` devices."""

    tuns: list[FakeTun] = field(default_factory=list)
    addresses: list[tuple[str, str]] = field(default_factory=list)
    links: list[tuple[str, int]] = field(default_factory=list)
    firewalls: list[FakeFirewall] = field(default_factory=list)
    routes: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    lan: list[str] = field(default_factory=list)
    underlay: tuple[str | None, str, tuple[str, ...]] | None = (None, "lo", ("127.0.0.1",))
    """What ``underlay_route`` answers (a test changes it, then calls the watchers: the network moved)."""
    network_watchers: list[Callable[[], None]] = field(default_factory=list)
    uplink: tuple[str | None, str] | None = (None, "lo")
    """What ``route_to`` answers for any address (the client pins its route to the gateway on it)."""
    default_device: str | None = "lo"
    """What ``default_interface`` answers: the interface of the default route."""
    forwarding: list[tuple[bool, str | None]] = field(default_factory=list)
    """Each ``enable_forwarding`` call: (IPv6 too, the uplink)."""
    resolver: bool | None = None
    """What ``serves_dns`` answers."""

    def open_tun(self, name: str, mtu: int, *, vnet: bool = False) -> FakeTun:
        tun = FakeTun(name)
        self.tuns.append(tun)
        return tun

    def add_address(self, device: str, interface: str) -> None:
        self.addresses.append((device, interface))

    def set_up(self, device: str, mtu: int) -> None:
        self.links.append((device, mtu))

    def firewall(self, name: str) -> FakeFirewall:
        table = FakeFirewall(name)
        self.firewalls.append(table)
        return table

    def delete_address(self, device: str, interface: str) -> None:
        self.addresses.remove((device, interface))

    def route_to(self, address: str) -> tuple[str | None, str] | None:
        return self.uplink

    def add_route(self, dst: str, gateway: str | None, device: str | None) -> None:
        self.routes.append((dst, gateway, device))

    def delete_route(self, dst: str, gateway: str | None, device: str | None) -> None:
        self.routes.remove((dst, gateway, device))

    def apply_dns(self, servers: list[str], saved: Path, device: str) -> str:
        saved.write_text("saved")
        self.dns = list(servers)
        return "resolv.conf"

    def restore_dns(self, saved: Path) -> None:
        saved.unlink()
        self.dns = []

    def local_networks(self, exclude: str) -> list[str]:
        return list(self.lan)

    def underlay_route(self, address: str, exclude: str) -> tuple[str | None, str, tuple[str, ...]] | None:
        return self.underlay

    def watch_network(self, on_event: Callable[[], None]) -> Callable[[], None]:
        self.network_watchers.append(on_event)
        return lambda: self.network_watchers.remove(on_event)

    def default_interface(self) -> str | None:
        return self.default_device

    def enable_forwarding(self, ipv6: bool, uplink: str | None) -> None:
        self.forwarding.append((ipv6, uplink))

    def serves_dns(self, address: str) -> bool | None:
        return self.resolver


def loopback_gateway(
    status_dir: Path, issuer: IssuerKey, tun_name: str, pool: ipaddress.IPv4Network, **options: Any
) -> GatewayConfig:
    """A gateway on free loopback ports, IPv4 only, accepting credentials from ``issuer``."""
    settings: dict[str, Any] = {
        "listen": "127.0.0.1",
        "listen6": None,
        "udp_port": free_port(),
        "tcp_port": free_port(),
        "tun_name": tun_name,
        "pool_v4": pool,
        "pool_v6": None,
        "status_socket": status_dir / "gw.sock",
    }
    settings.update(options)
    return GatewayConfig(
        private_key=KeyPair.generate().private_bytes(),
        issuer_public_keys=[issuer.public_key().to_bytes()],
        **settings,
    )


def free_port() -> int:
    """A loopback port free for both UDP and TCP right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
