"""The TLS carrier's gate and cover site, sans-IO: who is let through, and what everyone else gets."""

from __future__ import annotations

import os

import pytest

from veilgate.client.paths import TCP, TLS, UDP, Act, Action, PathManager
from veilgate.transport.cover import CoverConnection, CoverSite
from veilgate.transport.tls import (
    COVER,
    HELLO_LEN,
    VEILGATE,
    Gate,
    hello_key,
    make_certificate,
    make_hello,
    pem_pin,
)

KEY = hello_key(bytes(range(32)))
BINDING = os.urandom(48)
SITE = CoverSite(b"<p>hi</p>\n", clock=lambda: 0.0)


def cover_alone(*chunks: bytes) -> tuple[bytes, bool]:
    conn = CoverConnection(SITE)
    out, close = b"", False
    for chunk in chunks:
        got, close = conn.feed(chunk)
        out += got
        if got or close:
            break
    return out, close


def test_the_hello_of_this_session_passes() -> None:
    # The client writes the hello as one TLS record, which the server decrypts whole: one read,
    # alone or with the first frames after it.
    hello = make_hello(KEY, BINDING)
    decision = Gate(KEY, BINDING, SITE).feed(hello)
    assert decision is not None and decision.kind == VEILGATE and decision.rest == b""
    decision = Gate(KEY, BINDING, SITE).feed(hello + b"\x00\x03abc")
    assert decision is not None and decision.kind == VEILGATE and decision.rest == b"\x00\x03abc"


@pytest.mark.parametrize(
    "why",
    ["another session's binding", "another gateway's key"],
)
def test_a_hello_of_another_session_or_gateway_gets_the_cover(why: str) -> None:
    hello = (
        make_hello(KEY, os.urandom(48))
        if "session" in why
        else make_hello(hello_key(os.urandom(32)), BINDING)
    )
    decision = Gate(KEY, BINDING, SITE).feed(hello + b"\r\n\r\n")
    assert decision is not None and decision.kind == COVER
    assert (decision.out, decision.close) == cover_alone(hello + b"\r\n\r\n")
    assert decision.out.startswith(b"HTTP/1.1 400 Bad Request\r\n") and decision.close


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: www.example.org\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n",
        b"HEAD / HTTP/1.0\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01",
        b"\x01" * 10,
    ],
)
def test_whatever_is_not_a_client_gets_what_the_cover_site_alone_gives_at_once(data: bytes) -> None:
    decision = Gate(KEY, BINDING, SITE).feed(data)
    assert decision is not None and decision.kind == COVER
    assert (decision.out, decision.close) == cover_alone(data)
    assert decision.out  # the cover site answers these at once, and so does the gate


def test_the_gate_waits_exactly_as_long_as_the_cover_site_does() -> None:
    # A partial request line and fewer than 32 bytes: the cover site waits, the gate too.
    gate = Gate(KEY, BINDING, SITE)
    assert gate.feed(b"GET / HT") is None
    assert cover_alone(b"GET / HT") == (b"", False)
    decision = gate.feed(b"TP/1.1\r\nHost: a\r\n\r\n")
    assert decision is not None and decision.kind == COVER and decision.out.endswith(b"<p>hi</p>\n")
    # The peer closes before 32 bytes: the cover site's close.
    gate = Gate(KEY, BINDING, SITE)
    assert gate.feed(b"\xff" * 5) is None
    decision = gate.feed(b"")
    assert decision is not None and decision.kind == COVER and decision.close


def test_without_a_channel_binding_nothing_passes() -> None:
    decision = Gate(KEY, None, SITE).feed(make_hello(KEY, b""))
    assert decision is not None and decision.kind == COVER


def test_the_cover_site_answers_like_a_static_web_server() -> None:
    out, close = cover_alone(b"GET /index.html?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 10\r\n" in out and not close
    out, _ = cover_alone(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert out.endswith(b"\r\n\r\n") and b"Content-Length: 10" in out
    assert cover_alone(b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n")[0].startswith(b"HTTP/1.1 404 Not Found")
    out, _ = cover_alone(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 405 Method Not Allowed") and b"Allow: GET, HEAD" in out
    # Keep-alive: two requests in one read, two answers.
    conn = CoverConnection(SITE)
    out, close = conn.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 2)
    assert out.count(b"HTTP/1.1 200 OK") == 2 and not close
    out, close = conn.feed(b"")
    assert out == b"" and close


def test_the_pin_is_the_key_not_the_certificate() -> None:
    cert, key = make_certificate("www.example.org")
    other, _ = make_certificate("www.example.org")
    assert len(pem_pin(cert)) == 64 and pem_pin(cert) != pem_pin(other)
    assert b"BEGIN CERTIFICATE" in cert and b"PRIVATE KEY" in key
    assert len(make_hello(KEY, BINDING)) == HELLO_LEN


def test_auto_falls_back_to_tls_then_plain_tcp_then_tls_again() -> None:
    pm = PathManager(streams=(TLS, TCP), udp_grace=0.3)
    pm.start(0.0)
    assert pm.handle_timer(0.3) == [Action(Act.OPEN_STREAM, TLS)]
    assert pm.stream_failed(0.4, was_open=False) == [Action(Act.SEND_HANDSHAKE, UDP)]
    assert pm.handle_timer(0.9) == [Action(Act.OPEN_STREAM, TCP)]
    assert pm.stream_failed(1.0, was_open=False) == [Action(Act.SEND_HANDSHAKE, UDP)]
    assert pm.handle_timer(2.0) == [Action(Act.OPEN_STREAM, TLS)]
    assert pm.stream_connected(2.1) == [Action(Act.SEND_HANDSHAKE, TLS)]
    pm.response_on(TLS, 2.2)
    assert pm.active == TLS
    # A closed TLS connection is reconnected on TLS; a stall moves on to plain TCP.
    pm.stream_failed(3.0)
    assert pm.handle_timer(3.5) == [Action(Act.OPEN_STREAM, TLS)]
    pm.stream_connected(3.6)
    pm.response_on(TLS, 3.7)
    actions = pm.stalled(9.0, silent_for=3.0)
    assert actions == [
        Action(Act.CLOSE_STREAM),
        Action(Act.OPEN_STREAM, TCP),
        Action(Act.SEND_HANDSHAKE, UDP),
    ]


def test_plain_tcp_only_where_configured() -> None:
    pm = PathManager(streams=(TLS,))
    pm.start(0.0)
    assert pm.handle_timer(0.3) == [Action(Act.OPEN_STREAM, TLS)]
    pm.stream_failed(0.4, was_open=False)
    assert pm.handle_timer(0.9) == [Action(Act.OPEN_STREAM, TLS)]
    assert PathManager(mode=TLS, streams=(TCP,)).start(0.0) == [Action(Act.OPEN_STREAM, TLS)]
    udp_only = PathManager(streams=())
    udp_only.start(0.0)
    assert udp_only.handle_timer(0.3) == []
