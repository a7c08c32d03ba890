"""The machine a daemon changes: its TUN device, the device's addresses, its firewall table.

Daemons reach the machine only through a ``Host``, so the unit tests run a whole daemon with a
fake one (a socketpair for the TUN device, a record of the addresses and rules) and no root.
"""

from __future__ import annotations

from typing import Protocol

from veilgate.netfilter import NftTable
from veilgate.tun import TunDevice, netlink


class Tun(Protocol):
    """An open TUN device: a non-blocking descriptor that reads and writes one IP packet per call."""

    fd: int
    name: str

    def close(self) -> None: ...


class Firewall(Protocol):
    """A table of firewall rules the daemon owns, replaced whole and deleted on exit."""

    def apply(self, body: str) -> None: ...

    def delete(self) -> None: ...


class Host(Protocol):
    """What a daemon may change on the machine."""

    def open_tun(self, name: str, mtu: int) -> Tun: ...

    def add_address(self, device: str, interface: str) -> None: ...

    def set_up(self, device: str, mtu: int) -> None: ...

    def firewall(self, name: str) -> Firewall: ...


class LinuxHost:
    """The real machine: /dev/net/tun, netlink (pyroute2) and nftables."""

    def open_tun(self, name: str, mtu: int) -> Tun:
        tun = TunDevice.create(name, mtu)
        netlink.prepare_tunnel_interface(tun.name)
        return tun

    def add_address(self, device: str, interface: str) -> None:
        """Add an address with its prefix (``10.0.0.1/24``) to a device."""
        netlink.add_address(device, interface)

    def set_up(self, device: str, mtu: int) -> None:
        netlink.set_link(device, up=True, mtu=mtu)

    def firewall(self, name: str) -> Firewall:
        return NftTable(name)


__all__ = ["Firewall", "Host", "LinuxHost", "Tun"]
