"""TLS carrier: veilgate's framed datagrams inside an ordinary TLS 1.3 connection, behind a cover site.

The gateway listens on TCP 443 with a certificate for a name; the client connects with that name
as SNI and ALPN ``h2, http/1.1``, checks the gateway's key against its pin (SHA-256 of the
certificate's SubjectPublicKeyInfo; no CA chain), and sends as its first application bytes the
*hello*: 32 bytes, keyed BLAKE2s of this TLS session's ``tls-unique`` channel binding (the client's
Finished message) under ``HASH(LABEL_TLS_HELLO || S_gw)``. After the hello the stream carries the
same length-prefixed frames as the plain TCP carrier (``veilgate.transport.framing``).

The gateway's :class:`Gate` reads the first application bytes of each connection. It feeds them
to a cover-site connection (``veilgate.transport.cover``) as they arrive, holding its output: if
32 bytes form a valid hello before the cover site would have answered, the connection is a
veilgate client's; otherwise it is the cover site's, which then sends what it held. So whatever is
not a veilgate client gets the cover site's answers at the moment the cover site alone would give
them. docs/protocol.md, section 13, explains the choice.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from veilgate.protocol import crypto
from veilgate.transport.cover import IDLE_TIMEOUT, CoverConnection, CoverSite
from veilgate.transport.tcp import FramedConnection, OnClose, OnDatagrams, listening_socket

log = logging.getLogger("veilgate.transport")

LABEL_TLS_HELLO: Final = b"veilgate tls hello"
HELLO_LEN: Final = 32
CLIENT_ALPN: Final = ["h2", "http/1.1"]
SERVER_ALPN: Final = ["http/1.1"]


class TlsPinError(ConnectionError):
    """The gateway's TLS key is not the pinned one."""


# ---------------------------------------------------------------- certificates and pins


def spki_pin(certificate_der: bytes) -> str:
    """The pin of a certificate: SHA-256 of its SubjectPublicKeyInfo, 64 hex digits."""
    cert = x509.load_der_x509_certificate(certificate_der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def pem_pin(certificate_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(certificate_pem)
    return spki_pin(cert.public_bytes(serialization.Encoding.DER))


def make_certificate(name: str, days: int = 825) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 certificate for ``name``: (certificate PEM, private key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """An ordinary web server's context: TLS 1.2 and 1.3, ALPN http/1.1."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(SERVER_ALPN)
    return ctx


def client_context() -> ssl.SSLContext:
    """The client's context: offers TLS 1.2 and 1.3 and ALPN h2, http/1.1 as a browser does; the
    gateway is checked by its pin after the handshake (no CA chain)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(CLIENT_ALPN)
    return ctx


# ---------------------------------------------------------------- the hello, sans-IO


def hello_key(gateway_public: bytes) -> bytes:
    return crypto.hash_(LABEL_TLS_HELLO, gateway_public)


def make_hello(key: bytes, binding: bytes) -> bytes:
    """The client's first application bytes for the TLS session whose channel binding is ``binding``."""
    return hashlib.blake2s(binding, key=key, digest_size=HELLO_LEN).digest()


VEILGATE: Final = "veilgate"
COVER: Final = "cover"


@dataclass
class Decision:
    kind: str
    """``VEILGATE``: ``rest`` are the first frame bytes after the hello. ``COVER``: send ``out``, then
    close if ``close``."""
    rest: bytes = b""
    out: bytes = b""
    close: bool = False


class Gate:
    """Tells a veilgate client from anything else by the first application bytes of a TLS session."""

    def __init__(self, key: bytes, binding: bytes | None, site: CoverSite) -> None:
        self._expected = make_hello(key, binding) if binding else None
        self.cover = CoverConnection(site)
        self._buf = b""
        self._held: list[bytes] = []
        self._close = False
        self.decided: str | None = None

    def feed(self, data: bytes) -> Decision | None:
        """Bytes received (``b""``: the peer closed); a decision, or None to wait for more."""
        assert self.decided is None, "the gate has decided already"
        if data:
            self._buf += data
            if len(self._buf) >= HELLO_LEN:
                if self._expected is not None and hmac.compare_digest(self._buf[:HELLO_LEN], self._expected):
                    self.decided = VEILGATE
                    return Decision(VEILGATE, rest=self._buf[HELLO_LEN:])
                return self._to_cover(data)
        out, close = self.cover.feed(data)
        self._held.append(out)
        if out or close or not data:
            return self._to_cover(b"", fed=True, close=close)
        return None

    def _to_cover(self, data: bytes, *, fed: bool = False, close: bool = False) -> Decision:
        if not fed:
            out, close = self.cover.feed(data)
            self._held.append(out)
        self.decided = COVER
        return Decision(COVER, out=b"".join(self._held), close=close)


# ---------------------------------------------------------------- asyncio: gateway


class TlsAcceptor(asyncio.Protocol):
    """A TLS connection to the gateway until the gate decides; then a FramedConnection or the cover."""

    def __init__(self, key: bytes, site: CoverSite, on_datagrams: OnDatagrams, on_close: OnClose) -> None:
        self.key = key
        self.site = site
        self.on_datagrams = on_datagrams
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.gate: Gate | None = None
        self.cover: CoverConnection | None = None
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        binding = ssl_object.get_channel_binding("tls-unique") if ssl_object is not None else None
        self.gate = Gate(self.key, binding, self.site)
        self._arm()

    def _arm(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._timed_out)

    def _timed_out(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._input(data)

    def eof_received(self) -> bool | None:
        self._input(b"")
        return False

    def _input(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.cover is not None:
            out, close = self.cover.feed(data)
            self._answer(out, close)
            return
        assert self.gate is not None
        decision = self.gate.feed(data)
        if decision is None:
            self._arm()
            return
        if decision.kind == COVER:
            self.cover = self.gate.cover
            self.gate = None
            self._answer(decision.out, decision.close)
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.gate = None
        conn = FramedConnection(self.on_datagrams, self.on_close, carrier="tls")
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if decision.rest:
            conn.data_received(decision.rest)

    def _answer(self, out: bytes, close: bool) -> None:
        assert self.transport is not None
        if out:
            self.transport.write(out)
        if close:
            self.transport.close()
        else:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None


async def serve_tls(
    host: str,
    port: int,
    context: ssl.SSLContext,
    gateway_public: bytes,
    site: CoverSite,
    on_datagrams: OnDatagrams,
    on_close: OnClose,
    sock: socket.socket | None = None,
) -> asyncio.Server:
    """Listen for TLS connections: veilgate clients get framed connections, the rest the cover site.
    ``sock``: a socket already listening there (a worker's, from the gateway's supervisor)."""
    loop = asyncio.get_running_loop()
    sock = sock or listening_socket(host, port)
    key = hello_key(gateway_public)
    return await loop.create_server(
        lambda: TlsAcceptor(key, site, on_datagrams, on_close),
        sock=sock,
        ssl=context,
        ssl_handshake_timeout=IDLE_TIMEOUT,
    )


# ---------------------------------------------------------------- asyncio: client


async def connect_tls(
    host: str,
    port: int,
    name: str,
    pin: str,
    gateway_public: bytes,
    on_datagrams: OnDatagrams,
    on_close: OnClose,
    timeout: float = 5.0,
) -> FramedConnection:
    """Connect, check the gateway's key against ``pin``, send the hello; the framed connection."""
    loop = asyncio.get_running_loop()
    transport, conn = await asyncio.wait_for(
        loop.create_connection(
            lambda: FramedConnection(on_datagrams, on_close, carrier="tls"),
            host,
            port,
            ssl=client_context(),
            server_hostname=name,
            ssl_handshake_timeout=timeout,
        ),
        timeout,
    )
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der or not hmac.compare_digest(spki_pin(der), pin.lower()):
        conn.on_close = _ignore_close
        conn.close()
        raise TlsPinError(f"the gateway's TLS key does not match tls_pin (on {host} port {port})")
    binding = ssl_object.get_channel_binding("tls-unique")
    if ssl_object.version() != "TLSv1.3" or not binding:
        conn.on_close = _ignore_close
        conn.close()
        raise ConnectionError(f"the gateway did not negotiate TLS 1.3 (on {host} port {port})")
    transport.write(make_hello(hello_key(gateway_public), binding))
    return conn


def _ignore_close(conn: FramedConnection) -> None:
    pass


__all__ = [
    "HELLO_LEN",
    "Gate",
    "TlsPinError",
    "client_context",
    "connect_tls",
    "hello_key",
    "make_certificate",
    "make_hello",
    "pem_pin",
    "serve_tls",
    "server_context",
    "spki_pin",
]
