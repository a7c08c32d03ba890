"""The privilege drop: after setup a daemon runs as its own user with only the capabilities it needs.

The sequence is the usual one: PR_SET_KEEPCAPS, drop every other capability from the bounding set,
setgroups/setresgid/setresuid to the user, capset the kept ones as effective, permitted and
inheritable, and raise them as ambient so that the commands the daemon runs (``nft``) keep them
too. Then PR_SET_NO_NEW_PRIVS: nothing the daemon runs can gain privileges again.

This is ctypes over libc's ``prctl`` and ``syscall``: the PyPI wrappers (python-prctl, pyprctl)
have not been released for years and python-prctl needs libcap's headers to build; the calls are
few and fixed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import logging
import os
import pwd
import stat
from pathlib import Path

from veilgate.config import ConfigError

log = logging.getLogger("veilgate.systemd")

CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_NAMES = {CAP_CHOWN: "CAP_CHOWN", CAP_DAC_OVERRIDE: "CAP_DAC_OVERRIDE"} | {
    CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE",
    CAP_NET_ADMIN: "CAP_NET_ADMIN",
}

_PR_CAPBSET_DROP = 24
_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91, "armv7l": 185, "i686": 185, "riscv64": 91, "ppc64le": 184}
_CAP_VERSION_3 = 0x20080522

ROOT = "root"


class PrivilegeError(Exception):
    """The drop failed; the daemon must not go on serving (it would run with more than it should)."""


@dataclasses.dataclass(frozen=True)
class RunAs:
    """Whom to drop to: the user's ids, the capabilities kept, the directories handed to the user."""

    user: str
    uid: int
    gid: int
    keep: frozenset[int]
    own: tuple[Path, ...] = ()


def run_as(
    user: str, keep: set[int], own: tuple[Path, ...], *, source: Path | None, field: str
) -> RunAs | None:
    """Resolve the configured user now, before anything starts; None for "root" (no drop).

    A missing user is a configuration error (one line naming the file and the field): running as
    root instead, silently, would be the worse outcome.
    """
    if user == ROOT:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        key = field.rsplit(".", maxsplit=1)[-1]
        where = f"{source}: {field}" if source is not None else field
        raise ConfigError(
            f"{where}: no system user {user!r}; create it (`veilgate install-units --user`, or "
            f'`useradd --system --no-create-home {user}`), or set {key} = "root" '
            "to keep running as root"
        ) from None
    if source is not None and not _readable_by(source, entry):
        log.warning(
            "%s is not readable by user %s: a reload (SIGHUP) will fail; let its group read it "
            "(chgrp %s %s; chmod g+r %s)",
            source,
            user,
            entry.pw_gid,
            source,
            source,
        )
    return RunAs(user, entry.pw_uid, entry.pw_gid, frozenset(keep), own)


def _readable_by(path: Path, entry: pwd.struct_passwd) -> bool:
    """Whether the user could read ``path`` (its permission bits; the folders above are not checked)."""
    try:
        st = path.stat()
    except OSError:
        return True  # not this function's error to report
    if st.st_uid == entry.pw_uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == entry.pw_gid:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int) -> None:
    """Receive ``sig`` when the parent process ends, however it ends."""
    _check(_libc().prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"{what} failed: {os.strerror(err)}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _capset(libc: ctypes.CDLL, caps: frozenset[int]) -> None:
    number = _SYS_CAPSET.get(os.uname().machine)
    if number is None:
        raise PrivilegeError(f"capset: unknown system call number on {os.uname().machine}")
    mask = sum(1 << c for c in caps)
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        part = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = data[i].inheritable = part
    _check(libc.syscall(number, ctypes.byref(header), data), "capset")


def _hand_over(path: Path, uid: int, gid: int) -> None:
    """Give the daemon's own folder to its user, so that it can write there after the drop.

    A folder anyone may write to (``/tmp``) is never taken over: the socket or state in it stays
    root's, and the daemon writes around it.
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(parents=True, mode=0o755)
    mode = path.stat().st_mode
    if mode & stat.S_IWOTH or mode & stat.S_ISVTX:
        log.debug("not handing %s to the daemon's user: anyone may write there", path)
        return
    os.chown(path, uid, gid)


def drop_privileges(target: RunAs) -> None:
    """Switch to ``target``'s user, keeping only ``target.keep`` (effective, permitted, ambient)."""
    if os.geteuid() == target.uid:
        return
    if os.geteuid() != 0:
        raise PrivilegeError(f"cannot switch to user {target.user}: not running as root")
    for path in target.own:
        _hand_over(path, target.uid, target.gid)
    libc = _libc()
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        if cap not in target.keep and libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            # Without CAP_SETPCAP (a unit's CapabilityBoundingSet= already narrowed it) the set is
            # left as systemd made it; the process's own sets are what count below.
            break
    _check(libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setresgid(target.gid, target.gid, target.gid)
    os.setresuid(target.uid, target.uid, target.uid)
    _capset(libc, target.keep)
    for cap in sorted(target.keep):
        _check(libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, cap, 0, 0), "raising an ambient capability")
    _check(libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    log.info(
        "running as %s with %s",
        target.user,
        ", ".join(CAP_NAMES.get(c, str(c)) for c in sorted(target.keep)) or "no capabilities",
    )


__all__ = [
    "CAP_DAC_OVERRIDE",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "PrivilegeError",
    "RunAs",
    "die_with_parent",
    "drop_privileges",
    "run_as",
]
