"""Pushed DNS servers: /etc/resolv.conf rewritten with a backup, restored on exit or after a crash.

The backup lives in a state file so a client that crashed restores it at its
next start.
"""

from __future__ import annotations

import os
from pathlib import Path

RESOLV_CONF = Path("/etc/resolv.conf")
MARKER = "# written by veilgate; the previous file is restored when the tunnel goes down\n"


def apply_dns(servers: list[str], state: Path, resolv_conf: Path = RESOLV_CONF) -> None:
    if not servers:
        return
    if not state.exists():
        try:
            previous = resolv_conf.read_text()
        except FileNotFoundError:
            previous = ""
        state.parent.mkdir(parents=True, exist_ok=True)
        tmp = state.with_suffix(".tmp")
        tmp.write_text(previous)
        os.replace(tmp, state)
    body = MARKER + "".join(f"nameserver {s}\n" for s in servers)
    # Write in place: /etc/resolv.conf may be a bind mount (network namespaces) a rename would not replace.
    resolv_conf.write_text(body)


def restore_dns(state: Path, resolv_conf: Path = RESOLV_CONF) -> None:
    if not state.exists():
        return
    resolv_conf.write_text(state.read_text())
    state.unlink()
