"""The few facts veilgate reads from an IP header: one parser for the whole Python side.

The compiled data path has its C twin (``fastpath/receive.c``);
``tests/unit/test_fastpath_constants.py`` holds both to the same answers. Nothing here raises:
an authenticated peer can still send any bytes.
"""

from __future__ import annotations


def packet_length(data: bytes) -> int:
    """Length of the IP packet at the start of ``data`` (the rest is padding), or -1.

    -1 also when the header's length is shorter than the header itself or longer than ``data``.
    """
    if not data:
        return -1
    version = data[0] >> 4
    if version == 4 and len(data) >= 20:
        length = (data[2] << 8) | data[3]
        if length < 20:
            return -1
    elif version == 6 and len(data) >= 40:
        length = 40 + ((data[4] << 8) | data[5])
    else:
        return -1
    return length if length <= len(data) else -1


def source(packet: bytes) -> bytes:
    """The packed source address of an IP packet (4 or 16 bytes; fewer if the packet is short)."""
    return packet[12:16] if packet[0] >> 4 == 4 else packet[8:24]


def destination(packet: bytes) -> bytes:
    """The packed destination address of an IP packet (4 or 16 bytes; fewer if the packet is short)."""
    return packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]


__all__ = ["destination", "packet_length", "source"]
