"""The gateway's addresses: its host name resolved, the addresses ordered and tried as Happy
Eyeballs (RFC 8305) orders and tries them.

``gateway_host`` may be a name; it is resolved with getaddrinfo when the client starts and again
when the network changes. The addresses are interleaved by family, IPv6 first (RFC 8305, section
4), and tried in that order, each attempt started 250 ms after the one before unless that one
failed sooner (section 5); the first to succeed is used. An attempt is one handshake initiation
from a throwaway key (``ranking.probe_rtt``): it shows the gateway no identity and no credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable

from veilgate.client.ranking import probe_rtt

ATTEMPT_DELAY = 0.25
"""RFC 8305's recommended Connection Attempt Delay."""


class ResolveError(Exception):
    pass


def is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve(host: str, port: int) -> list[str]:
    """The host's addresses (a literal stands for itself), in getaddrinfo's (RFC 6724) order."""
    if is_literal(host):
        return [str(ipaddress.ip_address(host))]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ResolveError(f"cannot resolve the gateway host {host}: {exc}") from None
    out: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%")[0]
        if address not in out:
            out.append(address)
    if not out:
        raise ResolveError(f"the gateway host {host} has no address")
    return out


def happy_eyeballs_order(addresses: list[str]) -> list[str]:
    """Interleaved by family, IPv6 first, each family keeping its own order (RFC 8305, section 4)."""
    v6 = [a for a in addresses if ipaddress.ip_address(a).version == 6]
    v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
    out: list[str] = []
    for i in range(max(len(v6), len(v4))):
        out += v6[i : i + 1] + v4[i : i + 1]
    return out


async def race(
    addresses: list[str], attempt: Callable[[str], Awaitable[bool]], delay: float = ATTEMPT_DELAY
) -> str | None:
    """The first address whose attempt succeeds; attempts start in order, ``delay`` apart, or at once
    when every running one has failed. None if all fail."""
    loop = asyncio.get_running_loop()
    running: dict[asyncio.Future[bool], str] = {}
    pending = list(addresses)
    try:
        while pending or running:
            if pending:
                address = pending.pop(0)
                running[asyncio.ensure_future(attempt(address))] = address
            deadline = loop.time() + delay if pending else None
            while running:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break  # the delay passed: start the next attempt beside the running ones
                for fut in done:
                    address = running.pop(fut)
                    if not fut.cancelled() and fut.exception() is None and fut.result():
                        return address
                if not running:
                    break  # every running attempt failed: the next starts now
        return None
    finally:
        for fut in running:
            fut.cancel()
        for fut in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await fut


async def pick_address(addresses: list[str], port: int, public_key: bytes, timeout: float = 1.0) -> str:
    """The address to use among ``addresses``: the first that answers a handshake probe in Happy
    Eyeballs order, else the first in that order."""
    ordered = happy_eyeballs_order(addresses)
    if len(ordered) == 1:
        return ordered[0]

    async def attempt(address: str) -> bool:
        return await probe_rtt(address, port, public_key, timeout) is not None

    return await race(ordered, attempt) or ordered[0]
