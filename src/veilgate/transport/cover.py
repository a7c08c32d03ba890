"""The cover site, sans-IO: a static HTTP/1.1 web server, as the TLS carrier shows it to everyone else.

Everything on the TLS port that is not a veilgate client (a browser, a scanner, a replayed
capture, random bytes) talks to this: it parses requests with h11 and answers ``GET`` and ``HEAD``
of ``/`` (and ``/index.html``) with the configured page, other paths with 404, other methods with
405, and what does not parse as HTTP/1.1 with 400 and a close, as a small static web server does.
It answers only once a request head is complete (or over 16 KiB): the TLS gate
(``veilgate.transport.tls``) relies on that to decide at the same moment the cover would answer.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from typing import Final

import h11

MAX_HEAD: Final = 16 * 1024
IDLE_TIMEOUT: Final = 30.0
"""Seconds a connection may stay silent (before or between requests) before the server closes it."""

DEFAULT_PAGE: Final = b"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Welcome</title></head>
<body>
<h1>Welcome</h1>
<p>This site is under construction.</p>
</body>
</html>
"""

_REASON: Final = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    431: b"Request Header Fields Too Large",
}

_ERROR_BODY: Final = {
    400: b"<html><head><title>400 Bad Request</title></head><body><h1>Bad Request</h1></body></html>\n",
    404: b"<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>\n",
    405: b"<html><head><title>405 Method Not Allowed</title></head>"
    b"<body><h1>Method Not Allowed</h1></body></html>\n",
    431: b"<html><head><title>431 Request Header Fields Too Large</title></head>"
    b"<body><h1>Request Header Fields Too Large</h1></body></html>\n",
}


class CoverSite:
    """The page and the clock the responses are dated by (shared by every connection)."""

    def __init__(self, page: bytes = DEFAULT_PAGE, clock: Callable[[], float] | None = None) -> None:
        self.page = page
        self.clock = clock

    def date(self) -> bytes:
        if self.clock is None:
            return email.utils.formatdate(usegmt=True).encode()
        return email.utils.formatdate(self.clock(), usegmt=True).encode()


class CoverConnection:
    """One connection to the cover site: bytes in, bytes out, and whether to close."""

    def __init__(self, site: CoverSite) -> None:
        self.site = site
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.closed = False

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Received ``data`` (``b""``: the peer closed); return what to send and whether to close after."""
        if self.closed:
            return b"", True
        out: list[bytes] = []
        conn = self.conn
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    break
                if event is h11.PAUSED:
                    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                        conn.start_next_cycle()
                        continue
                    break
                if isinstance(event, h11.Request):
                    out += self._respond(event)
                elif isinstance(event, h11.ConnectionClosed):
                    self.closed = True
                    break
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                status = 431 if exc.error_status_hint == 431 else 400
                out += self._send(status, _ERROR_BODY[status], head=False, close=True)
            self.closed = True
        if (
            conn.our_state is h11.MUST_CLOSE or conn.their_state in (h11.MUST_CLOSE, h11.CLOSED)
        ) and conn.our_state is not h11.SEND_BODY:
            self.closed = True
        return b"".join(out), self.closed

    def _respond(self, request: h11.Request) -> list[bytes]:
        method = request.method.upper()
        target = request.target.split(b"?", 1)[0]
        head = method == b"HEAD"
        if method not in (b"GET", b"HEAD"):
            return self._send(405, _ERROR_BODY[405], head=False, extra=[(b"Allow", b"GET, HEAD")])
        if target not in (b"/", b"/index.html"):
            return self._send(404, _ERROR_BODY[404], head=head)
        return self._send(200, self.site.page, head=head)

    def _send(
        self,
        status: int,
        body: bytes,
        *,
        head: bool,
        close: bool = False,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> list[bytes]:
        headers = [
            (b"Date", self.site.date()),
            (b"Content-Type", b"text/html; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
            *(extra or []),
        ]
        if close:
            headers.append((b"Connection", b"close"))
        conn = self.conn
        out = [conn.send(h11.Response(status_code=status, headers=headers, reason=_REASON[status])) or b""]
        if not head:
            out.append(conn.send(h11.Data(data=body)) or b"")
        out.append(conn.send(h11.EndOfMessage()) or b"")
        return out


__all__ = ["DEFAULT_PAGE", "IDLE_TIMEOUT", "CoverConnection", "CoverSite"]
