"""What a censor's active probe sees on a gateway's TLS port, next to a cover-only server.

Run inside a namespace that reaches the gateway::

    python -m veilgate.testing.tlsprobe --gateway ADDR --port 443 --name NAME --pin PIN \\
        --gateway-key BASE64 --cert tls.crt --key tls.key [--page FILE]

It starts a *reference* server on this namespace's loopback: the same TLS listener with the same
certificate and page but a gateway key nobody holds, so that no connection can ever pass its gate
(a plain cover site). It records a real client's first flight through a TCP relay (the
``connect_tls`` the client daemon uses), then sends each probe to the gateway and to the reference
and prints, as JSON, what each answered: the raw TLS records (content type and length) of the
replayed first flight, and for the rest the bytes (decrypted where the probe speaks TLS), with the
HTTP Date header blanked, and whether the server closed the connection.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import ssl
import sys
from pathlib import Path
from typing import Any

from veilgate.transport.cover import DEFAULT_PAGE, CoverSite
from veilgate.transport.tcp import FramedConnection
from veilgate.transport.tls import client_context, connect_tls, serve_tls, server_context

READ_FOR = 1.0
"""Seconds a probe waits for more after the last bytes it got."""


BROWSER_GET = (
    b"GET / HTTP/1.1\r\nHost: www.example.org\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) "
    b"Gecko/20100101 Firefox/128.0\r\nAccept: text/html,application/xhtml+xml\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\nConnection: keep-alive\r\n\r\n"
)


def tls_records(data: bytes) -> list[tuple[int, int]]:
    """(content type, length) of each TLS record in ``data`` (a trailing partial one as length -1)."""
    out = []
    pos = 0
    while pos + 5 <= len(data):
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if pos + 5 + length > len(data):
            out.append((data[pos], -1))
            break
        out.append((data[pos], length))
        pos += 5 + length
    return out


def blank_date(data: bytes) -> bytes:
    return re.sub(rb"Date: [^\r\n]*", b"Date: -", data)


async def _read_all(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Everything until the peer closes (True) or is silent for READ_FOR seconds (False)."""
    got = b""
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), READ_FOR)
        except TimeoutError:
            return got, False
        except (ConnectionError, ssl.SSLError):
            return got, True
        if not chunk:
            return got, True
        got += chunk


async def raw_probe(host: str, port: int, payload: bytes) -> tuple[bytes, bool]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(payload)
    try:
        return await _read_all(reader)
    finally:
        writer.close()


async def tls_probe(host: str, port: int, name: str, payload: bytes) -> tuple[bytes, bool]:
    """As a browser would connect (SNI, ALPN h2 and http/1.1), then ``payload`` inside TLS."""
    reader, writer = await asyncio.open_connection(host, port, ssl=client_context(), server_hostname=name)
    if payload:
        writer.write(payload)
    try:
        return await _read_all(reader)
    finally:
        writer.close()


async def capture_first_flight(host: str, port: int, name: str, pin: str, gateway_key: bytes) -> bytes:
    """A real client's bytes to the gateway (ClientHello, Finished, the hello), through a relay."""
    sent = bytearray()
    done = asyncio.get_running_loop().create_future()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
            while data := await src.read(65536):
                if record:
                    sent.extend(data)
                dst.write(data)
            dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))
        if not done.done():
            done.set_result(None)

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    relay_port = server.sockets[0].getsockname()[1]
    conn = await connect_tls(
        "127.0.0.1", relay_port, name, pin, gateway_key, lambda frames, c: None, _ignore, timeout=5.0
    )
    await asyncio.sleep(0.3)  # the hello reaches the gateway
    conn.close()
    await asyncio.wait_for(done, 5)
    server.close()
    return bytes(sent)


def _ignore(conn: FramedConnection) -> None:
    pass


def _show(result: tuple[bytes, bool], *, records: bool = False) -> dict[str, Any]:
    data, closed = result
    if records:
        return {"records": tls_records(data), "closed": closed}
    return {"data": base64.b64encode(blank_date(data)).decode(), "closed": closed}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    gateway_key = base64.b64decode(args.gateway_key)
    page = Path(args.page).read_bytes() if args.page else DEFAULT_PAGE
    reference = await serve_tls(
        "127.0.0.1",
        0,
        server_context(args.cert, args.key),
        os.urandom(32),
        CoverSite(page),
        lambda frames, conn: None,
        _ignore,
    )
    ref_port = reference.sockets[0].getsockname()[1]
    targets = {"gateway": (args.gateway, args.port), "reference": ("127.0.0.1", ref_port)}
    flight = await capture_first_flight(args.gateway, args.port, args.name, args.pin, gateway_key)
    random_bytes = os.urandom(600)
    probes: dict[str, Any] = {
        "replayed_first_flight": lambda h, p: raw_probe(h, p, flight),
        "random_bytes": lambda h, p: raw_probe(h, p, random_bytes),
        "plain_http_get": lambda h, p: raw_probe(h, p, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        "tls_http_get": lambda h, p: tls_probe(h, p, args.name, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        "tls_random_bytes": lambda h, p: tls_probe(h, p, args.name, random_bytes),
        "tls_random_head": lambda h, p: tls_probe(h, p, args.name, random_bytes + b"\r\n\r\n"),
        "tls_browser_get": lambda h, p: tls_probe(h, p, args.name, BROWSER_GET),
        "tls_short_random": lambda h, p: tls_probe(h, p, args.name, random_bytes[:20]),
        "tls_h2_preface": lambda h, p: tls_probe(h, p, args.name, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        "tls_nothing": lambda h, p: tls_probe(h, p, args.name, b""),
    }
    out: dict[str, Any] = {"first_flight": tls_records(flight)}
    for probe, run in probes.items():
        out[probe] = {
            target: _show(await run(host, port), records=probe == "replayed_first_flight")
            for target, (host, port) in targets.items()
        }
    reference.close()
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="veilgate.testing.tlsprobe")
    p.add_argument("--gateway", required=True)
    p.add_argument("--port", type=int, default=443)
    p.add_argument("--name", required=True)
    p.add_argument("--pin", required=True)
    p.add_argument("--gateway-key", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--page")
    return p.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse(sys.argv[1:])))))
