"""Control messages carried inside the tunnel, distinguished from IP packets.

A decrypted transport payload is one of:

- empty: a keepalive;
- an IP packet: the first byte's high nibble is 4 or 6;
- a control message: the first byte is ``0xF0`` (high nibble 15).

Control message layout (big-endian, like the IP packets it travels beside)::

    0xF0 | type (1) | body length (2) | body

The body of CONFIG is a list of TLVs ``tag (1) | length (1) | value``; a
receiver skips tags it does not know, so options can be added without a new
protocol version. Padding to 16 bytes follows the body (zeros) and is ignored.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Final

from veilgate.protocol.errors import RemoteProtocolError

CONTROL_MARKER: Final = 0xF0

CTRL_CONFIG: Final = 1
"""Gateway to client, after each handshake: addresses, DNS, routes, MTU, lease."""
CTRL_PROBE: Final = 2
"""Either side: asks for a PROBE_REPLY on the same path; never makes the gateway roam."""
CTRL_PROBE_REPLY: Final = 3
CTRL_CLOSE: Final = 4
"""Client to gateway: the session ends now (lease released at once)."""

TLV_IPV4: Final = 1  # 4-byte address, 1-byte prefix length
TLV_IPV6: Final = 2  # 16-byte address, 1-byte prefix length
TLV_DNS: Final = 3  # 4 or 16 bytes, repeatable
TLV_ROUTE: Final = 4  # 4+1 or 16+1 bytes, repeatable
TLV_MTU: Final = 5  # u16
TLV_LEASE: Final = 6  # u32 seconds
TLV_KEEPALIVE: Final = 7  # u16 seconds
TLV_EPOCH_KEYS: Final = 8  # (epoch u64, key id 8 bytes) pairs, 1 to 15 per TLV, repeatable
_EPOCH_KEY = struct.Struct("!Q8s")
_EPOCH_KEYS_PER_TLV: Final = 255 // _EPOCH_KEY.size

_HDR = struct.Struct("!BBH")

IPv4Interface = ipaddress.IPv4Interface
IPv6Interface = ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TunnelConfig:
    """What the gateway pushes after a handshake."""

    ipv4: ipaddress.IPv4Interface | None = None
    ipv6: ipaddress.IPv6Interface | None = None
    dns: tuple[IPAddress, ...] = ()
    routes: tuple[IPNetwork, ...] = ()
    mtu: int = 1420
    lease: int = 0
    keepalive: int = 0
    epoch_keys: tuple[tuple[int, bytes], ...] = ()
    """The blind-credential epoch keys the gateway accepts, as (epoch, key id): split-view detection."""
    unknown_tags: tuple[int, ...] = field(default=(), compare=False)

    def encode_body(self) -> bytes:
        out = bytearray()
        if self.ipv4 is not None:
            out += bytes((TLV_IPV4, 5)) + self.ipv4.ip.packed + bytes((self.ipv4.network.prefixlen,))
        if self.ipv6 is not None:
            out += bytes((TLV_IPV6, 17)) + self.ipv6.ip.packed + bytes((self.ipv6.network.prefixlen,))
        for server in self.dns:
            out += bytes((TLV_DNS, len(server.packed))) + server.packed
        for route in self.routes:
            packed = route.network_address.packed + bytes((route.prefixlen,))
            out += bytes((TLV_ROUTE, len(packed))) + packed
        out += bytes((TLV_MTU, 2)) + struct.pack("!H", self.mtu)
        out += bytes((TLV_LEASE, 4)) + struct.pack("!I", self.lease)
        out += bytes((TLV_KEEPALIVE, 2)) + struct.pack("!H", self.keepalive)
        for i in range(0, len(self.epoch_keys), _EPOCH_KEYS_PER_TLV):
            chunk = self.epoch_keys[i : i + _EPOCH_KEYS_PER_TLV]
            out += bytes((TLV_EPOCH_KEYS, _EPOCH_KEY.size * len(chunk)))
            out += b"".join(_EPOCH_KEY.pack(epoch, key_id) for epoch, key_id in chunk)
        return bytes(out)

    @classmethod
    def decode_body(cls, body: bytes) -> TunnelConfig:
        ipv4: ipaddress.IPv4Interface | None = None
        ipv6: ipaddress.IPv6Interface | None = None
        dns: list[IPAddress] = []
        routes: list[IPNetwork] = []
        mtu, lease, keepalive = 1420, 0, 0
        epoch_keys: list[tuple[int, bytes]] = []
        unknown: list[int] = []
        pos = 0
        try:
            while pos < len(body):
                if pos + 2 > len(body):
                    raise RemoteProtocolError("truncated TLV", "control")
                tag, length = body[pos], body[pos + 1]
                value = body[pos + 2 : pos + 2 + length]
                if len(value) != length:
                    raise RemoteProtocolError("truncated TLV value", "control")
                pos += 2 + length
                if tag == TLV_IPV4:
                    _need(length == 5)
                    ipv4 = ipaddress.IPv4Interface((value[:4], value[4]))
                elif tag == TLV_IPV6:
                    _need(length == 17)
                    ipv6 = ipaddress.IPv6Interface((value[:16], value[16]))
                elif tag == TLV_DNS:
                    _need(length in (4, 16))
                    dns.append(ipaddress.ip_address(value))
                elif tag == TLV_ROUTE:
                    _need(length in (5, 17))
                    net_cls = ipaddress.IPv4Network if length == 5 else ipaddress.IPv6Network
                    routes.append(net_cls((value[:-1], value[-1])))
                elif tag == TLV_MTU:
                    _need(length == 2)
                    mtu = struct.unpack("!H", value)[0]
                    _need(576 <= mtu <= 65535)
                elif tag == TLV_LEASE:
                    _need(length == 4)
                    lease = struct.unpack("!I", value)[0]
                elif tag == TLV_KEEPALIVE:
                    _need(length == 2)
                    keepalive = struct.unpack("!H", value)[0]
                elif tag == TLV_EPOCH_KEYS:
                    _need(length > 0 and length % _EPOCH_KEY.size == 0)
                    epoch_keys.extend(_EPOCH_KEY.iter_unpack(value))
                else:
                    unknown.append(tag)
        except ValueError as exc:  # ipaddress refuses bad prefixes or host bits
            raise RemoteProtocolError(f"bad value in config: {exc}", "control") from exc
        return cls(
            ipv4, ipv6, tuple(dns), tuple(routes), mtu, lease, keepalive, tuple(epoch_keys), tuple(unknown)
        )


def _need(ok: bool) -> None:
    if not ok:
        raise RemoteProtocolError("bad TLV in config", "control")


@dataclass(frozen=True)
class ControlMessage:
    type: int
    body: bytes

    def encode(self) -> bytes:
        if len(self.body) > 0xFFFF:
            raise ValueError("control body too long")
        return _HDR.pack(CONTROL_MARKER, self.type, len(self.body)) + self.body


def decode_control(plaintext: bytes) -> ControlMessage:
    """Parse a control message from a decrypted payload (padding after the body is ignored)."""
    if len(plaintext) < _HDR.size or plaintext[0] != CONTROL_MARKER:
        raise RemoteProtocolError("not a control message", "control")
    _, msg_type, length = _HDR.unpack_from(plaintext)
    body = plaintext[_HDR.size : _HDR.size + length]
    if len(body) != length:
        raise RemoteProtocolError("control message truncated", "control")
    return ControlMessage(msg_type, body)


def config_message(config: TunnelConfig) -> bytes:
    return ControlMessage(CTRL_CONFIG, config.encode_body()).encode()


def probe_message(probe_id: int) -> bytes:
    return ControlMessage(CTRL_PROBE, struct.pack("!Q", probe_id)).encode()


def probe_reply_message(body: bytes) -> bytes:
    return ControlMessage(CTRL_PROBE_REPLY, body).encode()


def close_message() -> bytes:
    return ControlMessage(CTRL_CLOSE, b"").encode()
