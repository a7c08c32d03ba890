"""The handshake flooder: its message 1s are what a gateway accepts, its pacing holds, it counts replies.

Traffic goes to loopback only.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from veilgate.protocol import messages
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.gateway import GatewayProtocol
from veilgate.testing.flood import Flooder, main, measure_capacity, message_pool

from .harness import AcceptAll, Addr


def test_pool_messages_are_distinct_and_each_gets_a_message_2() -> None:
    key = KeyPair.generate()
    pool = message_pool(key.public, handshakes=4, indices=3)
    assert len(pool) == len(set(pool)) == 12
    assert len({m[4:8] for m in pool}) == 12, "every message has its own sender index"
    assert all(m[messages.INIT_MAC2_OFFSET :] == bytes(16) for m in pool), "no mac2: it never has a cookie"
    gateway = GatewayProtocol(key, AcceptAll())
    for m in pool:
        gateway.receive_datagram(m, Addr("198.51.100.9", 1000), 5.0)
    assert gateway.counters["handshake-responses"] == 12, gateway.counters
    other = GatewayProtocol(KeyPair.generate(), AcceptAll())
    other.receive_datagram(pool[0], Addr("198.51.100.9", 1000), 5.0)
    assert other.counters["drop-mac1"] == 1, "mac1 is bound to the gateway's key"


def test_capacity_figures() -> None:
    cap = measure_capacity(per_round=10, rounds=1, cookie_replies=50)
    assert cap.handshakes_per_second > 0 and cap.handshake_us > 0
    assert 0 < cap.cookie_reply_us < cap.handshake_us


def _answering_gateway(stop: threading.Event, seen: list[tuple[str, bytes]]) -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)

    def serve() -> None:
        n = 0
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                continue
            seen.append((addr[0], data))
            n += 1
            # Every other one a cookie reply, every tenth a message 2, as a gateway under load would.
            kind = messages.HDR_RESP if n % 10 == 0 else messages.HDR_COOKIE if n % 2 else None
            if kind is not None:
                sock.sendto(kind + bytes(60), addr)

    threading.Thread(target=serve, daemon=True).start()
    return sock, sock.getsockname()[1]


def test_flooder_paces_uses_every_source_and_counts_replies() -> None:
    stop = threading.Event()
    seen: list[tuple[str, bytes]] = []
    sock, port = _answering_gateway(stop, seen)
    try:
        pool = message_pool(KeyPair.generate().public, handshakes=2, indices=4)
        flooder = Flooder(("127.0.0.1", port), pool, ["127.0.0.2", "127.0.0.3", "127.0.0.4"], 1000, 0.6)
        t0 = time.monotonic()
        report = flooder.run()
        assert time.monotonic() - t0 < 2, "it stops by itself"
    finally:
        stop.set()
        time.sleep(0.1)
        sock.close()
    assert report.send_errors == 0 and report.sources == 3 and report.distinct_messages == 8
    assert 500 <= report.sent <= 700 and 850 <= report.rate <= 1100, report
    assert len(seen) == report.sent
    assert {addr for addr, _ in seen} == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
    assert {data for _, data in seen} == set(pool)
    assert report.cookie_replies >= 0.45 * report.sent and report.responses >= 0.08 * report.sent, report
    assert report.other_replies == 0


def test_flooder_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="600 seconds"):
        Flooder(("127.0.0.1", 9), [b"x"], ["127.0.0.2"], 10, 3600)
    with pytest.raises(SystemExit):
        main(["send", "--gateway", "nowhere", "--public-key", "x", "--source", "127.0.0.2"])
    assert "IPv4-ADDRESS:PORT" in capsys.readouterr().err
