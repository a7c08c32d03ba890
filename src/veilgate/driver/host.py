"""The machine a daemon changes: its TUN device and addresses, routes, DNS, its firewall table.

Daemons reach the machine only through a ``Host``, so the unit tests run a whole daemon with a
fake one (a socketpair for the TUN device, a record of the addresses and rules) and no root.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from veilgate.netfilter import NftTable
from veilgate.tun import TunDevice, dns, netlink


class Tun(Protocol):
    """An open TUN device: a non-blocking descriptor that reads and writes one IP packet per call."""

    fd: int
    name: str
    vnet: bool
    """Every packet read or written goes with a virtio-net header (IFF_VNET_HDR)."""

    def close(self) -> None: ...


class Firewall(Protocol):
    """A table of firewall rules the daemon owns, replaced whole and deleted on exit."""

    def apply(self, body: str) -> None: ...

    def delete(self) -> None: ...


class Host(Protocol):
    """What a daemon may change on the machine."""

    def open_tun(self, name: str, mtu: int, *, vnet: bool = False) -> Tun: ...

    def add_address(self, device: str, interface: str) -> None: ...

    def set_up(self, device: str, mtu: int) -> None: ...

    def firewall(self, name: str) -> Firewall: ...

    def delete_address(self, device: str, interface: str) -> None: ...

    def route_to(self, address: str) -> tuple[str | None, str] | None:
        """The next hop and device the main table uses for ``address`` now (None: no route)."""
        ...

    def add_route(self, dst: str, gateway: str | None, device: str | None) -> None: ...

    def delete_route(self, dst: str, gateway: str | None, device: str | None) -> None: ...

    def apply_dns(self, servers: list[str], saved: Path, device: str) -> str:
        """Use ``servers`` (reached through ``device``) for DNS, saving what was in force to ``saved``;
        returns how ("systemd-resolved" or "resolv.conf")."""
        ...

    def restore_dns(self, saved: Path) -> None: ...

    def local_networks(self, exclude: str) -> list[str]:
        """The directly connected networks of every link but loopback and ``exclude``."""
        ...

    def underlay_route(self, address: str, exclude: str) -> tuple[str | None, str, tuple[str, ...]] | None:
        """How ``address`` is reached without device ``exclude`` and without a host route to it:
        (next hop, device, that device's addresses), None without a route."""
        ...

    def watch_network(self, on_event: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_event`` on every address, route or link change (from the running loop);
        returns the function that stops watching."""
        ...

    def default_interface(self) -> str | None:
        """The interface of the default route (None: there is none)."""
        ...

    def enable_forwarding(self, ipv6: bool, uplink: str | None) -> None:
        """Let the machine forward packets between its interfaces (IPv6 too if ``ipv6``)."""
        ...

    def serves_dns(self, address: str) -> bool | None:
        """Whether something listens on UDP port 53 at ``address`` (None: cannot tell)."""
        ...


class LinuxHost:
    """The real machine: /dev/net/tun, netlink (pyroute2) and nftables."""

    def open_tun(self, name: str, mtu: int, *, vnet: bool = False) -> Tun:
        tun = TunDevice.create(name, mtu, vnet=vnet)
        netlink.prepare_tunnel_interface(tun.name)
        return tun

    def add_address(self, device: str, interface: str) -> None:
        """Add an address with its prefix (``10.0.0.1/24``) to a device."""
        netlink.add_address(device, interface)

    def set_up(self, device: str, mtu: int) -> None:
        netlink.set_link(device, up=True, mtu=mtu)

    def firewall(self, name: str) -> Firewall:
        return NftTable(name)

    def delete_address(self, device: str, interface: str) -> None:
        netlink.delete_address(device, interface)

    def route_to(self, address: str) -> tuple[str | None, str] | None:
        return netlink.route_to(address)

    def add_route(self, dst: str, gateway: str | None, device: str | None) -> None:
        netlink.add_route(dst, gateway=gateway, device=device)

    def delete_route(self, dst: str, gateway: str | None, device: str | None) -> None:
        netlink.delete_route(dst, gateway=gateway, device=device)

    def apply_dns(self, servers: list[str], saved: Path, device: str) -> str:
        return dns.apply_dns(servers, saved, device)

    def restore_dns(self, saved: Path) -> None:
        dns.restore_dns(saved)

    def local_networks(self, exclude: str) -> list[str]:
        return netlink.local_networks(exclude)

    def underlay_route(self, address: str, exclude: str) -> tuple[str | None, str, tuple[str, ...]] | None:
        return netlink.underlay_route(address, exclude)

    def watch_network(self, on_event: Callable[[], None]) -> Callable[[], None]:
        return netlink.watch_network(on_event)

    def default_interface(self) -> str | None:
        return netlink.default_interface()

    def enable_forwarding(self, ipv6: bool, uplink: str | None) -> None:
        netlink.enable_forwarding(ipv6, uplink)

    def serves_dns(self, address: str) -> bool | None:
        return _serves_dns(address)


def _serves_dns(address: str) -> bool | None:
    """A bind to ``address`` port 53 without SO_REUSEADDR fails with EADDRINUSE exactly when a
    socket (a resolver's) holds the port for that address or the wildcard."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 53))
        except OSError as exc:
            return True if exc.errno == errno.EADDRINUSE else None
    return False


__all__ = ["Firewall", "Host", "LinuxHost", "Tun"]
