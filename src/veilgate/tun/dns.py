"""Pushed DNS servers: through systemd-resolved where the system resolves through it, else
/etc/resolv.conf rewritten with a backup; undone on exit or, after a crash, at the next start.

With systemd-resolved (its runtime directory exists and /etc/resolv.conf sends queries to its
stub, 127.0.0.53 or 127.0.0.54), the servers are set on the tunnel device alone, with the routing
domain ``~.`` and the DNS default route on it: every name is then resolved through the tunnel and
no query goes to the other links' servers. ``resolvectl revert`` takes them back (resolved also
forgets a link when the device goes). Otherwise /etc/resolv.conf is rewritten in place, its
previous text kept in the state file.

The state file says which of the two was done, so that a client that crashed undoes the right one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_RUN = Path("/run/systemd/resolve")
RESOLVED_STUBS = ("127.0.0.53", "127.0.0.54")
MARKER = "# written by veilgate; the previous file is restored when the tunnel goes down\n"
RESOLVED_STATE = "veilgate: systemd-resolved link "
"""First line of the state file when the servers went to systemd-resolved (the device follows)."""

Runner = Callable[[Sequence[str]], None]
"""Runs one resolvectl command line (raises on failure); tests pass a recorder."""


class DnsError(Exception):
    pass


def run_resolvectl(args: Sequence[str]) -> None:
    resolvectl = shutil.which("resolvectl")
    if resolvectl is None:
        raise DnsError("systemd-resolved runs but resolvectl is missing")
    result = subprocess.run([resolvectl, *args], capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise DnsError(f"resolvectl {' '.join(args)} failed: {result.stderr.strip()}")


def uses_resolved(resolv_conf: Path = RESOLV_CONF, run_dir: Path = RESOLVED_RUN) -> bool:
    """Whether names are resolved through systemd-resolved: it runs (its runtime directory exists)
    and /etc/resolv.conf sends queries to its stub listener."""
    if not run_dir.is_dir():
        return False
    try:
        text = resolv_conf.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            return fields[1] in RESOLVED_STUBS
    return False


def apply_dns(
    servers: list[str],
    state: Path,
    device: str,
    resolv_conf: Path = RESOLV_CONF,
    *,
    resolved: bool | None = None,
    run: Runner = run_resolvectl,
) -> str:
    """Use ``servers`` for every name; returns how ("systemd-resolved" or "resolv.conf")."""
    if not servers:
        return "none"
    if resolved is None:
        resolved = uses_resolved(resolv_conf)
    state.parent.mkdir(parents=True, exist_ok=True)
    if resolved:
        _write_state(state, f"{RESOLVED_STATE}{device}\n")
        try:
            run(["dns", device, *servers])
            run(["domain", device, "~."])
            run(["default-route", device, "yes"])
        except Exception:
            restore_dns(state, resolv_conf, run=run)
            raise
        return "systemd-resolved"
    if not state.exists():
        try:
            previous = resolv_conf.read_text()
        except FileNotFoundError:
            previous = ""
        _write_state(state, previous)
    body = MARKER + "".join(f"nameserver {s}\n" for s in servers)
    # Write in place: /etc/resolv.conf may be a bind mount (network namespaces) a rename would not replace.
    resolv_conf.write_text(body)
    return "resolv.conf"


def restore_dns(state: Path, resolv_conf: Path = RESOLV_CONF, *, run: Runner = run_resolvectl) -> None:
    if not state.exists():
        return
    saved = state.read_text()
    if saved.startswith(RESOLVED_STATE):
        device = saved[len(RESOLVED_STATE) :].strip()
        # Fails when the device is gone already: resolved forgot the link with it.
        with contextlib.suppress(Exception):
            run(["revert", device])
    else:
        resolv_conf.write_text(saved)
    state.unlink()


def _write_state(state: Path, text: str) -> None:
    tmp = state.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, state)
