"""TUN devices: the kernel's layer-3 virtual interface, opened through /dev/net/tun.

The TUNSETIFF ioctl has no wrapper in a maintained Python library (pyroute2
creates persistent TUN devices but does not hand back the queue's file
descriptor), so the few lines of ioctl are written here.
"""

from __future__ import annotations

import fcntl
import os
import struct
from typing import Final

TUNSETIFF: Final = 0x400454CA
IFF_TUN: Final = 0x0001
IFF_NO_PI: Final = 0x1000
IFF_MULTI_QUEUE: Final = 0x0100
IFNAMSIZ: Final = 16


def open_queue(name: str, *, multi_queue: bool = False) -> tuple[int, str]:
    """Open /dev/net/tun and attach it to TUN interface ``name`` (created if missing) with TUNSETIFF;
    returns the non-blocking descriptor and the interface's name.

    With ``multi_queue``, every call with the same name adds one more queue to the interface.
    """
    if not name or len(name) >= IFNAMSIZ:
        raise ValueError(f"interface name must be 1 to {IFNAMSIZ - 1} characters: {name!r}")
    flags = IFF_TUN | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", name.encode(), flags)
        result = fcntl.ioctl(fd, TUNSETIFF, ifr)
        actual = result[:16].rstrip(b"\x00").decode()
        os.set_blocking(fd, False)
    except OSError:
        os.close(fd)
        raise
    return fd, actual


class TunDevice:
    """An open, non-persistent TUN interface; closing it removes the interface."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name

    @classmethod
    def create(cls, name: str, mtu: int = 1420) -> TunDevice:
        fd, actual = open_queue(name)
        from veilgate.tun import netlink  # noqa: PLC0415 - netlink pulls in pyroute2, only needed here

        netlink.set_link(actual, up=True, mtu=mtu)
        return cls(fd, actual)

    def read(self, n: int = 65535) -> bytes:
        return os.read(self.fd, n)

    def write(self, packet: bytes) -> int:
        return os.write(self.fd, packet)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
