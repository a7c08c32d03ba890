"""Asking a daemon for its status: the one JSON line its status socket answers
(``veilgate.driver.Driver.serve_status``), read by ``veilgate status`` and by a gateway's
supervisor from its workers."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


def query_status(path: str | Path, timeout: float = 5.0) -> dict[str, Any]:
    """The status a daemon's socket at ``path`` answers. Raises OSError (nobody answers) or
    ValueError (not a status)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = json.loads(data)
    if not isinstance(status, dict):
        raise ValueError(f"not a status: {data[:80]!r}")
    return status


__all__ = ["query_status"]
