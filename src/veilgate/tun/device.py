"""TUN devices: the kernel's layer-3 virtual interface, opened through /dev/net/tun.

The TUNSETIFF ioctl has no wrapper in a maintained Python library (pyroute2
creates persistent TUN devices but does not hand back the queue's file
descriptor), so the few lines of ioctl are written here.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from typing import Final

log = logging.getLogger(__name__)

TUNSETIFF: Final = 0x400454CA
IFF_TUN: Final = 0x0001
IFF_NO_PI: Final = 0x1000
IFF_MULTI_QUEUE: Final = 0x0100
IFF_VNET_HDR: Final = 0x4000
IFNAMSIZ: Final = 16

VNET_HDR_LEN: Final = 10
"""struct virtio_net_hdr (include/uapi/linux/virtio_net.h), before every packet read from or
written to a TUN opened with IFF_VNET_HDR."""
VNET_HDR_NONE: Final = bytes(VNET_HDR_LEN)
"""The header of a plain packet: no GSO, no partial checksum."""

_refused_logged = False


def open_queue(name: str, *, multi_queue: bool = False, vnet_hdr: bool = False) -> tuple[int, str, bool]:
    """Open /dev/net/tun and attach it to TUN interface ``name`` (created if missing) with TUNSETIFF;
    returns the non-blocking descriptor, the interface's name and whether every packet goes with
    a virtio-net header.

    With ``multi_queue``, every call with the same name adds one more queue to the interface.
    With ``vnet_hdr`` the queue is opened with IFF_VNET_HDR, which lets the compiled data path hand
    the kernel coalesced TCP packets (veilgate.fastpath, tun_out.c); where the kernel refuses the
    flag, this is logged once and the queue is opened without it. The queues of one interface
    share their flags: the kernel refuses a queue whose flags differ from the first's.
    """
    global _refused_logged  # noqa: PLW0603 - one log line per process, not per queue
    if not name or len(name) >= IFNAMSIZ:
        raise ValueError(f"interface name must be 1 to {IFNAMSIZ - 1} characters: {name!r}")
    flags = IFF_TUN | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
    if vnet_hdr:
        try:
            fd, actual = _attach(name, flags | IFF_VNET_HDR)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            if not _refused_logged:
                log.warning(
                    "the kernel refused IFF_VNET_HDR on %s (%s): one packet per TUN write", name, exc.strerror
                )
                _refused_logged = True
        else:
            return fd, actual, True
    fd, actual = _attach(name, flags)
    return fd, actual, False


def _attach(name: str, flags: int) -> tuple[int, str]:
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


def strip_vnet(data: bytes) -> bytes | None:
    """The packet after a virtio-net header, or None for one the kernel should not have sent
    (a GSO packet or a partial checksum: no offload was asked for with TUNSETOFFLOAD)."""
    if len(data) <= VNET_HDR_LEN or data[0] & 1 or data[1]:  # VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type
        return None
    return data[VNET_HDR_LEN:]


class TunDevice:
    """An open, non-persistent TUN interface; closing it removes the interface.

    ``vnet``: opened with IFF_VNET_HDR; ``read`` and ``write`` take and give plain IP packets
    either way."""

    def __init__(self, fd: int, name: str, vnet: bool = False) -> None:
        self.fd = fd
        self.name = name
        self.vnet = vnet

    @classmethod
    def create(cls, name: str, mtu: int = 1420, *, vnet: bool = False) -> TunDevice:
        fd, actual, vnet = open_queue(name, vnet_hdr=vnet)
        from veilgate.tun import netlink  # noqa: PLC0415 - netlink pulls in pyroute2, only needed here

        netlink.set_link(actual, up=True, mtu=mtu)
        return cls(fd, actual, vnet)

    def read(self, n: int = 65535) -> bytes:
        """One packet (b"" for one dropped: see ``strip_vnet``)."""
        if not self.vnet:
            return os.read(self.fd, n)
        return strip_vnet(os.read(self.fd, n + VNET_HDR_LEN)) or b""

    def write(self, packet: bytes) -> int:
        if not self.vnet:
            return os.write(self.fd, packet)
        return os.writev(self.fd, (VNET_HDR_NONE, packet)) - VNET_HDR_LEN

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
