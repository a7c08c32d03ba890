"""What both daemons do around their sans-IO cores, written once.

``Driver`` (``base.py``) runs a daemon: start, signals, stop, the one timer that follows the core's
next deadline, the pump after every I/O callback, and the status socket. ``readers.py`` reads
batches from a TUN device and a UDP socket the way both sides want them read. The gateway and the
client subclass ``Driver`` and keep only what differs between them.
"""

from veilgate.driver.base import Driver, Runtime, total
from veilgate.driver.readers import Wake, read_tun, read_udp, write_tun

__all__ = ["Driver", "Runtime", "Wake", "read_tun", "read_udp", "total", "write_tun"]
