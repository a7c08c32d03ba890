"""The optional compiled data path (``_fastpath.c``) and whether this process uses it.

Built by ``pip install`` where a C compiler and the Python and OpenSSL headers are present
(setup.py marks it optional). A daemon that wants it (``wanted``) gives its core
``fastpath.keypair.CompiledKeypair`` to make keypairs with, so that every keypair keeps its keys,
send counter and replay window here, and serves established UDP sessions' packets from the
compiled loops without running Python per packet; everything else stays in the Python core.
``VEILGATE_FASTPATH=0`` in a daemon's environment turns it off: the test suite runs the
end-to-end tests both ways. docs/performance.md has the measurement that justified it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

try:
    from veilgate.fastpath._fastpath import ClientPath, GatewayPath, Keys, Peer, Poller

    BUILT = True
except ImportError:  # not built: the pure-Python data path serves
    BUILT = False

DataPath: TypeAlias = "ClientPath | GatewayPath"
"""A side's compiled loops."""

ENV = "VEILGATE_FASTPATH"


def wanted(environ: Mapping[str, str]) -> bool:
    """The compiled data path is built and ``environ`` (a daemon's, as it starts) does not turn it off."""
    return BUILT and environ.get(ENV, "1") != "0"


KIND_TUN = 0
KIND_UDP = 1

PENDING_TUN = 0
"""A ``take()`` entry: an IP packet read from the TUN that no keypair could send."""
PENDING_DATAGRAM = 1
"""A datagram the compiled path did not handle (a handshake, an unknown or expired index, ...)."""
PENDING_OPENED = 2
"""An authenticated control message, already opened (counted as received)."""

ROUTE_NONE = -1
"""``Peer.update``'s socket number for a session not reached over UDP (its packets go to Python)."""

__all__ = [
    "BUILT",
    "ENV",
    "KIND_TUN",
    "KIND_UDP",
    "PENDING_DATAGRAM",
    "PENDING_OPENED",
    "PENDING_TUN",
    "ROUTE_NONE",
    "ClientPath",
    "DataPath",
    "GatewayPath",
    "Keys",
    "Peer",
    "Poller",
    "wanted",
]
