"""veilgate: a VPN for privacy-focused providers.

Packages, one per layer:

- ``veilgate.protocol``: the sans-IO protocol core (handshake, sessions, replay
  window, timers, cookies, wire format). No I/O, no clock.
- ``veilgate.credentials``: anonymous, short-lived client credentials.
- ``veilgate.transport``: UDP and TCP carriers of protocol datagrams.
- ``veilgate.tun``: TUN devices, addresses and routes over netlink.
- ``veilgate.gateway`` / ``veilgate.client``: the asyncio daemons.
- ``veilgate.provider``: the provider service (bootstrap and issuance).
- ``veilgate.cli``: the ``veilgate`` command.
"""

__version__ = "0.1.0"
