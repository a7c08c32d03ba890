"""Gateway ranking in provider mode: the handshake probe counts only a real answer to itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import pytest

from veilgate.client import ranking
from veilgate.client.ranking import handshake_rtt, rank_gateways
from veilgate.protocol.constants import COOKIE_NONCE_LEN
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.messages import (
    COOKIE_REPLY_LEN,
    RESP_LEN,
    CookieReply,
    HandshakeInit,
    HandshakeResp,
    Transport,
)
from veilgate.provider.document import GatewayEntry

Answer = Callable[[HandshakeInit], bytes | None]


def resp(init: HandshakeInit) -> bytes:
    return HandshakeResp(7, init.sender, bytes(RESP_LEN - 12)).encode()


def cookie(init: HandshakeInit) -> bytes:
    return CookieReply(
        init.sender, bytes(COOKIE_NONCE_LEN), bytes(COOKIE_REPLY_LEN - 8 - COOKIE_NONCE_LEN)
    ).encode()


class _Gateway(asyncio.DatagramProtocol):
    """A stand-in gateway on loopback: answers each message 1 with what ``answer`` makes of it."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.received += 1
        reply = self.answer(HandshakeInit.decode(data))
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


def probe(answer: Answer, timeout: float = 1.0) -> tuple[float | None, int]:
    async def scenario() -> tuple[float | None, int]:
        loop = asyncio.get_running_loop()
        gateway = _Gateway(answer)
        transport, _ = await loop.create_datagram_endpoint(lambda: gateway, local_addr=("127.0.0.1", 0))
        try:
            port = transport.get_extra_info("sockname")[1]
            entry = GatewayEntry("gw", "127.0.0.1", KeyPair.generate().public, port, port)
            return await handshake_rtt(entry, timeout), gateway.received
        finally:
            transport.close()

    return asyncio.run(scenario())


@pytest.mark.parametrize("answer", [resp, cookie], ids=["handshake-response", "cookie-reply"])
def test_a_response_or_a_cookie_reply_to_the_probe_is_its_rtt(answer: Answer) -> None:
    rtt, received = probe(answer)
    assert received == 1
    assert rtt is not None and 0.0 <= rtt < 1.0


def test_answers_to_another_index_another_type_or_malformed_do_not_count() -> None:
    def other_index(init: HandshakeInit) -> bytes:
        return HandshakeResp(7, init.sender ^ 1, bytes(RESP_LEN - 12)).encode()

    def transport_message(init: HandshakeInit) -> bytes:
        return Transport(init.sender, 0, bytes(16)).encode()

    def short_response(init: HandshakeInit) -> bytes:
        return resp(init)[:12]

    for answer in (other_index, transport_message, short_response, lambda init: None):
        rtt, received = probe(answer, timeout=0.2)
        assert received == 1 and rtt is None


def test_an_unreachable_gateway_has_no_rtt() -> None:
    entry = GatewayEntry("gw", "127.0.0.1", KeyPair.generate().public, 9, 9)  # discard: nothing answers
    assert asyncio.run(handshake_rtt(entry, 0.2)) is None


def test_ranking_weighs_rtt_by_load_and_puts_the_unanswered_last_in_document_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = KeyPair.generate().public
    gws = (
        silent_a := GatewayEntry("silent-a", "192.0.2.1", key, 1, 1),
        near_busy := GatewayEntry("near-busy", "192.0.2.2", key, 1, 1, load=1.0),  # 0.010 * 3
        far_idle := GatewayEntry("far-idle", "192.0.2.3", key, 1, 1),  # 0.020 * 1
        silent_b := GatewayEntry("silent-b", "192.0.2.4", key, 1, 1),
    )
    rtts = {"silent-a": None, "near-busy": 0.010, "far-idle": 0.020, "silent-b": None}

    async def fake_rtt(gateway: GatewayEntry, timeout: float = 1.0) -> float | None:
        return rtts[gateway.name]

    monkeypatch.setattr(ranking, "handshake_rtt", fake_rtt)
    ranked = asyncio.run(rank_gateways(gws))
    assert ranked == [(far_idle, 0.020), (near_busy, 0.010), (silent_a, None), (silent_b, None)]
