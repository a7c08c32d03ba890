"""veilgate: a VPN for privacy-focused providers.

Packages, one per layer:

- ``veilgate.protocol``: the sans-IO protocol core (handshake, sessions, replay
  window, timers, cookies, wire format). No I/O, no clock, no environment.
- ``veilgate.credentials``: anonymous, short-lived client credentials.
- ``veilgate.fastpath``: the optional compiled data path (C).
- ``veilgate.transport``: UDP and TCP carriers of protocol datagrams, the event loop.
- ``veilgate.tun`` / ``veilgate.netfilter``: TUN devices, addresses and routes; nftables.
- ``veilgate.driver``: what both daemons do around their cores, written once.
- ``veilgate.gateway`` / ``veilgate.client``: the two daemons.
- ``veilgate.provider``: the provider service (bootstrap and issuance).
- ``veilgate.cli``: the ``veilgate`` command.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("veilgate")
    """The installed distribution's version: pyproject.toml's ``version`` is the one source."""
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
