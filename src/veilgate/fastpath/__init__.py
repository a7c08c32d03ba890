"""The optional compiled data path (the ``_fastpath`` module) and whether this process uses it.

Built by ``pip install`` where a C compiler and the Python and OpenSSL headers are present
(setup.py marks it optional). A daemon that runs it (``wanted``, asked once at start) makes every
keypair keep its keys, send counter and replay window here (``fastpath.keypair.CompiledKeypair``,
the keypair factory it gives its core), and both the client and the gateway serve an established UDP session's
packets from C without running Python per packet; handshakes, timers and everything else stay in
the Python core. ``VEILGATE_FASTPATH=0`` in a daemon's environment turns it off: the test suite
runs the end-to-end tests both ways. The module's own limits and wire constants are exported here
and held equal to the protocol's by tests/unit/test_fastpath_constants.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

try:
    from veilgate.fastpath._fastpath import (
        CONTROL_MARKER,
        HP_KEY_LEN,
        HP_MASKED_HEAD,
        HP_SAMPLE_OFFSET,
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
"""Set to 0 in a daemon's environment to run the pure-Python data path although this one is built."""


def wanted(environ: Mapping[str, str]) -> bool:
    """The compiled data path is built and not turned off in ``environ`` (the daemons ask at start)."""
    return BUILT and environ.get(ENV, "1") != "0"


__all__ = [
    "BUILT",
    "CONTROL_MARKER",
    "ENV",
    "HP_KEY_LEN",
    "HP_MASKED_HEAD",
    "HP_SAMPLE_OFFSET",
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
    "wanted",
]
