"""The internet host's web server for tests: static files, and a paced download on request.

``python -m veilgate.testing.web PORT ROOT`` serves ROOT like ``python -m http.server``; a
request with ``?rate=N`` gets the file at N bytes per second, paced by the server. A client-side
limit (curl's ``--limit-rate``) is an average that curl 7.88 lets run well ahead, so a test that
needs a transfer still under way seconds later asks the server to pace it.
"""

from __future__ import annotations

import http.server
import socket
import sys
import time
import urllib.parse
from functools import partial
from typing import BinaryIO

CHUNK = 16384


class Handler(http.server.SimpleHTTPRequestHandler):
    rate = 0

    def send_head(self) -> BinaryIO | None:
        query = urllib.parse.urlsplit(self.path).query
        self.rate = int(urllib.parse.parse_qs(query).get("rate", ["0"])[0] or 0)
        return super().send_head()

    def copyfile(self, source: BinaryIO, outputfile: BinaryIO) -> None:  # type: ignore[override]
        if self.rate <= 0:
            super().copyfile(source, outputfile)
            return
        start, sent = time.monotonic(), 0
        while chunk := source.read(CHUNK):
            outputfile.write(chunk)
            sent += len(chunk)
            ahead = sent / self.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)

    def log_message(self, format: str, *args: object) -> None:
        pass


class DualStackServer(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main(argv: list[str]) -> int:
    port, root = int(argv[0]), argv[1]
    with DualStackServer(("::", port), partial(Handler, directory=root)) as server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
