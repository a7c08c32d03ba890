"""A minimal TUN <-> UDP relay: the floor for a Python tunnel (bench/latency.py, not veilgate).

Each side reads IP packets from its TUN device, seals them with ChaCha20-Poly1305 (the same
``cryptography`` call veilgate makes; a fixed key and nonce, as this is a timing floor, not a
tunnel) and sends them to the peer; and the other way round. One epoll loop, no protocol.

usage: relay.py TUN_NAME TUN_ADDRESS/PREFIX LOCAL_IP PEER_IP PORT {aead,plain}
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from veilgate.tun.device import TunDevice


def main() -> None:
    name, address, local, peer, port, mode = sys.argv[1:7]
    tun = TunDevice.create(name)
    subprocess.run(["ip", "addr", "add", address, "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((local, int(port)))
    sock.connect((peer, int(port)))
    sock.setblocking(False)
    fd = tun.fd
    os.set_blocking(fd, False)
    aead = ChaCha20Poly1305(bytes(32))
    nonce = bytes(12)
    sealed = mode == "aead"

    def on_tun() -> None:
        while True:
            try:
                packet = os.read(fd, 65535)
            except BlockingIOError:
                return
            with contextlib.suppress(OSError):
                sock.send(aead.encrypt(nonce, packet, None) if sealed else packet)

    def on_udp() -> None:
        while True:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            except OSError:
                continue
            try:
                os.write(fd, aead.decrypt(nonce, data, None) if sealed else data)
            except Exception:  # a floor measurement: a bad datagram is dropped
                continue

    handlers = {fd: on_tun, sock.fileno(): on_udp}
    ep = select.epoll()
    for f in handlers:
        ep.register(f, select.EPOLLIN)
    while True:
        for f, _ in ep.poll():
            handlers[f]()


if __name__ == "__main__":
    main()
