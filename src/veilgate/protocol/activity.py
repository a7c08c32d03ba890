"""What a data path outside the core did since the driver last asked: ``Activity``.

The compiled data path (veilgate.fastpath) seals, sends, opens and delivers packets of
established sessions without the core. The driver takes an ``Activity`` from it, for the client's
session or for one gateway peer, and hands it to ``ClientProtocol.account`` or
``GatewayProtocol.account``, which replay it through the same timer hooks the Python path calls
(``veilgate.protocol.timers``). Any object with these attributes will do: the compiled module's
own structure, or an ``ActivityRecord``.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Activity(Protocol):
    """Counts and times since the last take, in this order."""

    @property
    def tx_packets(self) -> int:
        """IP packets sealed and sent."""
        ...

    @property
    def tx_bytes(self) -> int:
        """Their bytes (the IP packets', before padding and sealing)."""
        ...

    @property
    def last_tx(self) -> float:
        """When the last of them was sent."""
        ...

    @property
    def first_unanswered(self) -> float:
        """When the first send after the last authenticated receive went out; 0.0 if none did.

        Gateway peers report 0.0 (the gateway keeps no stall timer)."""
        ...

    @property
    def authenticated(self) -> int:
        """Datagrams that authenticated: keepalives, control messages and IP packets."""
        ...

    @property
    def rx_packets(self) -> int:
        """IP packets delivered to the TUN."""
        ...

    @property
    def rx_bytes(self) -> int:
        """Their bytes."""
        ...

    @property
    def last_rx(self) -> float:
        """When the last authenticated datagram was received."""
        ...


class ActivityRecord(NamedTuple):
    """A plain ``Activity``: for tests, and for drivers that build one from other counts."""

    tx_packets: int = 0
    tx_bytes: int = 0
    last_tx: float = 0.0
    first_unanswered: float = 0.0
    authenticated: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    last_rx: float = 0.0
