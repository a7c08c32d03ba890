"""TUN devices, addresses and routes (netlink), and pushed DNS."""

from veilgate.tun import dns, netlink
from veilgate.tun.device import TunDevice

__all__ = ["TunDevice", "dns", "netlink"]
