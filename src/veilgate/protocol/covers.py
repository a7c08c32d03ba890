"""What an obfuscated flow shows first (docs/protocol.md 14.4), sans-IO.

- UDP: the client's first datagram on a socket is a STUN Binding Request as a WebRTC peer sends it
  for ICE connectivity checks (RFC 8445, 7.1.1: USERNAME, ICE-CONTROLLING, PRIORITY,
  MESSAGE-INTEGRITY, FINGERPRINT). Its MESSAGE-INTEGRITY is an HMAC-SHA1 under the cover key, so
  the gateway tells its own clients' requests from any other STUN message. It never answers one.
- plain TCP: the client's first bytes are an HTTP/1.1 ``CONNECT`` request to a proxy (RFC 9110,
  9.3.6) with a ``Proxy-Authorization: Negotiate`` token, as a browser behind a corporate proxy
  sends it. The token's first 16 bytes are the stream nonce (12) and a tag (4) under the cover
  key, the rest padding; the gateway answers a valid request with ``200 Connection established``
  and the masked frames follow. What is not a valid request is dropped and counted, and the
  connection closed. (nDPI names a ``CONNECT`` flow HTTP_Connect on every port; an HTTP request
  with a ``Host:`` header to a port it ties to a VPN, such as 1194, it names ``OpenVPN.HTTP``.)

The cover key is derived from the gateway's static public key, as the other gateway-wide
obfuscation keys: it separates cover from garbage, it is not a secret from the gateway's clients.
Every parser here returns ``None`` (or False) on bytes it cannot use; none raises on them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
import zlib
from typing import Final

from veilgate.protocol.obfs import STREAM_NONCE_LEN, derive_key

LABEL_COVER: Final = b"veilgate obfs cover v1"

# ---- STUN (RFC 5389 / 8489)

STUN_MAGIC: Final = 0x2112A442
STUN_BINDING_REQUEST: Final = 0x0001
STUN_HEADER_LEN: Final = 20
ATTR_USERNAME: Final = 0x0006
ATTR_MESSAGE_INTEGRITY: Final = 0x0008
ATTR_PRIORITY: Final = 0x0024
ATTR_ICE_CONTROLLING: Final = 0x802A
ATTR_FINGERPRINT: Final = 0x8028
_FINGERPRINT_XOR: Final = 0x5354554E
_MI_LEN: Final = 24
"""MESSAGE-INTEGRITY: a 4-byte attribute header and a 20-byte HMAC-SHA1."""
_FP_LEN: Final = 8
STUN_MAX: Final = 548
_UFRAG_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# ---- the proxy CONNECT (RFC 9110, 9.3.6)

HEAD_MAX: Final = 4096
"""The longest request or response head accepted before the stream begins."""
_TAG_LEN: Final = 16 - STREAM_NONCE_LEN
_TARGET_PORTS: Final = (b"443", b"443", b"443", b"8443")
CONNECTED: Final = b"HTTP/1.1 200 Connection established\r\n\r\n"
_AGENTS: Final = (
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/120.0.0.0 Safari/537.36",
    b"Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    b"Version/17.2 Safari/605.1.15",
)


def cover_key(gateway_public: bytes) -> bytes:
    return derive_key(LABEL_COVER, gateway_public, 32)


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack(">HH", kind, len(value)) + value + bytes(-len(value) % 4)


def _ufrag(n: int) -> bytes:
    return bytes(_UFRAG_ALPHABET[b & 63] for b in secrets.token_bytes(n))


def stun_binding_request(key: bytes) -> bytes:
    """A STUN Binding Request as an ICE agent sends it, its MESSAGE-INTEGRITY under ``key``."""
    txid = secrets.token_bytes(12)
    attrs = (
        _attr(ATTR_USERNAME, _ufrag(4 + secrets.randbelow(5)) + b":" + _ufrag(4 + secrets.randbelow(5)))
        + _attr(ATTR_ICE_CONTROLLING, secrets.token_bytes(8))
        + _attr(ATTR_PRIORITY, struct.pack(">I", (110 << 24) | (secrets.randbits(16) << 8) | 255))
    )
    # The HMAC covers the header with the length up to MESSAGE-INTEGRITY's end (RFC 8489, 14.5).
    head = struct.pack(">HHI", STUN_BINDING_REQUEST, len(attrs) + _MI_LEN, STUN_MAGIC) + txid
    mac = hmac.digest(key, head + attrs, "sha1")
    body = attrs + _attr(ATTR_MESSAGE_INTEGRITY, mac)
    head = struct.pack(">HHI", STUN_BINDING_REQUEST, len(body) + _FP_LEN, STUN_MAGIC) + txid
    crc = zlib.crc32(head + body) ^ _FINGERPRINT_XOR
    return head + body + _attr(ATTR_FINGERPRINT, struct.pack(">I", crc))


def looks_like_stun(data: bytes) -> bool:
    """Whether ``data`` has a STUN header (type's top two bits zero, the magic cookie, a length
    that is the rest): what the gateway sets aside before looking for a protocol message."""
    if len(data) < STUN_HEADER_LEN or data[0] & 0xC0:
        return False
    length: int
    magic: int
    _, length, magic = struct.unpack_from(">HHI", data)
    return magic == STUN_MAGIC and length == len(data) - STUN_HEADER_LEN and length % 4 == 0


def is_cover_request(key: bytes, data: bytes) -> bool:
    """Whether ``data`` is a Binding Request ``stun_binding_request(key)`` made."""
    if not looks_like_stun(data) or len(data) > STUN_MAX:
        return False
    if struct.unpack_from(">H", data)[0] != STUN_BINDING_REQUEST:
        return False
    end = len(data) - _FP_LEN
    mi = end - _MI_LEN
    if mi < STUN_HEADER_LEN or data[end : end + 4] != struct.pack(">HH", ATTR_FINGERPRINT, 4):
        return False
    if data[mi : mi + 4] != struct.pack(">HH", ATTR_MESSAGE_INTEGRITY, 20):
        return False
    head = data[:2] + struct.pack(">H", mi - STUN_HEADER_LEN + _MI_LEN) + data[4:STUN_HEADER_LEN]
    return hmac.compare_digest(hmac.digest(key, head + data[STUN_HEADER_LEN:mi], "sha1"), data[mi + 4 : end])


# ---- the proxy CONNECT on plain TCP


def _tag(key: bytes, nonce: bytes) -> bytes:
    return hashlib.blake2s(nonce, key=key, digest_size=_TAG_LEN).digest()


def connect_request(key: bytes, nonce: bytes, host: str, pad_to: int = 0) -> bytes:
    """The client's first bytes: a proxy ``CONNECT`` to ``host`` whose ``Negotiate`` token carries
    ``nonce``, at least ``pad_to`` bytes long (the token takes up the difference, as a Kerberos
    token of a few hundred to a few thousand bytes does)."""
    port = _TARGET_PORTS[secrets.randbelow(len(_TARGET_PORTS))]
    target = host.encode("ascii", "replace") + b":" + port
    agent = _AGENTS[secrets.randbelow(len(_AGENTS))]
    lines = [
        b"CONNECT " + target + b" HTTP/1.1",
        b"Host: " + target,
        b"User-Agent: " + agent,
        b"Proxy-Connection: keep-alive",
    ]
    head = b"\r\n".join(lines) + b"\r\n"
    fixed = len(head) + len(b"Proxy-Authorization: Negotiate \r\n\r\n")
    room = -(-max(pad_to - fixed, 0) * 3 // 4) - 16  # token bytes whose base64 fills pad_to
    token = nonce + _tag(key, nonce) + secrets.token_bytes(max(room, 24 + secrets.randbelow(48)))
    return head + b"Proxy-Authorization: Negotiate " + base64.b64encode(token) + b"\r\n\r\n"


def accept_connect(key: bytes, head: bytes) -> tuple[bytes, bytes] | None:
    """For a request head (up to and with its blank line) ``connect_request`` made: the stream
    nonce and the answer to send; None for anything else."""
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"CONNECT ") or not lines[0].endswith(b" HTTP/1.1"):
        return None
    token = b""
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"proxy-authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme != b"Negotiate":
                return None
    try:
        raw = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 16:
        return None
    nonce, tag = raw[:STREAM_NONCE_LEN], raw[STREAM_NONCE_LEN:16]
    if not hmac.compare_digest(_tag(key, nonce), tag):
        return None
    return nonce, CONNECTED


def is_connect_response(head: bytes) -> bool:
    return head == CONNECTED
