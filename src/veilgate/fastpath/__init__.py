"""The optional compiled data path (the ``_fastpath`` module) and whether this process uses it.

Built by ``pip install`` where a C compiler and the Python and OpenSSL headers are present
(setup.py marks it optional). When present, every keypair keeps its keys, send counter and replay
window in it (``protocol.keypair.CompiledKeypair``) and the client serves an established UDP
session's packets from it without running Python per packet; everything else stays in the
Python core. ``VEILGATE_FASTPATH=0`` in the environment turns it off: the test suite runs the
end-to-end tests both ways. docs/performance.md has the measurement that justified it.
"""

from __future__ import annotations

import os
from typing import TypeAlias

try:
    from veilgate.fastpath._fastpath import (
        CONTROL_MARKER,
        KIND_TUN,
        KIND_UDP,
        PADDING_MULTIPLE,
        PENDING_DATAGRAM,
        PENDING_OPENED,
        PENDING_TUN,
        PROTOCOL_VERSION,
        REJECT_AFTER_MESSAGES,
        REJECT_AFTER_TIME,
        REKEY_AFTER_MESSAGES,
        REPLAY_WINDOW,
        ROUTE_NONE,
        TAGLEN,
        TRANSPORT_HEADER_LEN,
        TRANSPORT_MIN_LEN,
        TYPE_TRANSPORT,
        Activity,
        ClientPath,
        GatewayPath,
        Keys,
        Peer,
        Pending,
        Poller,
    )

    BUILT = True
except ImportError:  # not built: the pure-Python data path serves
    BUILT = False

DataPath: TypeAlias = "ClientPath | GatewayPath"
"""A side's compiled loops."""

ENV = "VEILGATE_FASTPATH"
ENABLED = BUILT and os.environ.get(ENV, "1") != "0"
"""The compiled data path is built and not turned off."""

__all__ = [
    "BUILT",
    "CONTROL_MARKER",
    "ENABLED",
    "ENV",
    "KIND_TUN",
    "KIND_UDP",
    "PADDING_MULTIPLE",
    "PENDING_DATAGRAM",
    "PENDING_OPENED",
    "PENDING_TUN",
    "PROTOCOL_VERSION",
    "REJECT_AFTER_MESSAGES",
    "REJECT_AFTER_TIME",
    "REKEY_AFTER_MESSAGES",
    "REPLAY_WINDOW",
    "ROUTE_NONE",
    "TAGLEN",
    "TRANSPORT_HEADER_LEN",
    "TRANSPORT_MIN_LEN",
    "TYPE_TRANSPORT",
    "Activity",
    "ClientPath",
    "DataPath",
    "GatewayPath",
    "Keys",
    "Peer",
    "Pending",
    "Poller",
]
