"""Gateway choice in provider mode: each gateway's handshake round-trip time, and the ranking.

A probe sends one handshake initiation from a throwaway static key over UDP
and times the gateway's answer, a handshake response or a cookie reply (a
gateway under load answers with the latter, which still measures the path).
The probe never completes the handshake, so it shows the gateway neither an
identity nor a credential. The ranking weighs each round-trip time by the
load hint of the signed provider document.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from veilgate.protocol import covers
from veilgate.protocol.cookie import CookieGenerator
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.errors import RemoteProtocolError
from veilgate.protocol.handshake import InitiatorHandshake
from veilgate.protocol.messages import CookieReply, HandshakeResp, decode
from veilgate.protocol.obfs import Obfuscation
from veilgate.provider.document import GatewayEntry


class _Probe(asyncio.DatagramProtocol):
    def __init__(self, index: int, obfs: Obfuscation | None) -> None:
        self.index = index
        self.obfs = obfs
        self.answered: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.obfs is not None:
            unwrapped = self.obfs.unwrap(data)
            if unwrapped is None:
                return
            data = unwrapped
        try:
            message = decode(data)
        except RemoteProtocolError:
            return  # not an answer: keep waiting
        if (
            isinstance(message, HandshakeResp | CookieReply)
            and message.receiver == self.index
            and not self.answered.done()
        ):
            self.answered.set_result(time.monotonic())


async def handshake_rtt(gateway: GatewayEntry, timeout: float = 1.0) -> float | None:
    """Time a handshake initiation to ``gateway`` over UDP until its answer (response or cookie reply)."""
    return await probe_rtt(gateway.host, gateway.udp_port, gateway.public_key, timeout, gateway.obfuscation)


async def probe_rtt(
    host: str, port: int, public_key: bytes, timeout: float = 1.0, obfuscation: bool = False
) -> float | None:
    """Time a handshake initiation to the gateway with ``public_key`` at ``host`` (an address)."""
    loop = asyncio.get_running_loop()
    index = secrets.randbits(32)
    obfs = Obfuscation(public_key) if obfuscation else None
    probe = _Probe(index, obfs)
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: probe, remote_addr=(host, port))
    except OSError:
        return None
    try:
        init = InitiatorHandshake(
            KeyPair.generate(),
            public_key,
            index,
            CookieGenerator(public_key),
            time.monotonic(),
        )
        t0 = time.monotonic()
        if obfs is not None:  # the flow's first datagram, as on the client's own socket
            transport.sendto(covers.stun_binding_request(covers.cover_key(public_key)))
        transport.sendto(init.init_message if obfs is None else obfs.wrap(init.init_message))
        try:
            return await asyncio.wait_for(probe.answered, timeout) - t0
        except TimeoutError:
            return None
    finally:
        transport.close()


async def rank_gateways(gateways: tuple[GatewayEntry, ...]) -> list[tuple[GatewayEntry, float | None]]:
    """Best first: measured RTT weighted by the load hint; unanswered gateways last, in document order."""
    rtts = await asyncio.gather(*(handshake_rtt(g) for g in gateways))
    ranked = list(zip(gateways, rtts, strict=True))
    ranked.sort(key=lambda p: (p[1] is None, (p[1] or 0.0) * (1.0 + 2.0 * p[0].load)))
    return ranked
