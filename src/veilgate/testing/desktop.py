"""What a desktop has that a test namespace lacks: a DNS resolver (dnsmasq), systemd-resolved on
its own D-Bus system bus, and a packet capture (tcpdump).

systemd-resolved runs in a mount namespace of its own (a private /run, with the system bus socket
and resolved's runtime directory) inside a test's network namespace, so it touches neither the
machine's /run nor its /etc/resolv.conf. Its binary comes from an installed systemd-resolved
package, or else from the package unpacked into the virtualenv (``make deps`` unpacks it there
without installing it, since installing it replaces the machine's /etc/resolv.conf).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from veilgate.testing.netns import Topology

UNPACKED = Path(sys.prefix) / "debroot"
"""Where ``make deps`` unpacks the Debian packages the tests use without installing them."""

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""

RESOLVE_UID = 990


def resolved_binary() -> Path | None:
    for base in (Path("/"), UNPACKED):
        for sub in ("lib/systemd/systemd-resolved", "usr/lib/systemd/systemd-resolved"):
            if (base / sub).exists():
                return base / sub
    return None


def resolvectl_dir() -> Path | None:
    """The directory of the resolvectl that comes with ``resolved_binary``."""
    binary = resolved_binary()
    if binary is None:
        return None
    base = UNPACKED if binary.is_relative_to(UNPACKED) else Path("/")
    return base / "usr/bin" if (base / "usr/bin/resolvectl").exists() else None


def missing_resolved() -> str | None:
    if resolved_binary() is None or resolvectl_dir() is None:
        return "needs systemd-resolved (make deps unpacks it into the virtualenv)"
    for tool in ("dbus-daemon", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"needs {tool} (make deps installs it)"
    return None


class ResolvedNamespace:
    """systemd-resolved and a D-Bus system bus in a mount namespace inside network namespace ``ns``.

    ``enter`` is the command prefix that runs a program in that mount namespace (after
    ``ip netns exec ns``); ``resolvectl`` runs resolvectl there.
    """

    def __init__(self, topo: Topology, ns: str, workdir: Path) -> None:
        self.topo = topo
        self.ns = ns
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        binary = resolved_binary()
        bindir = resolvectl_dir()
        assert binary is not None and bindir is not None, missing_resolved()
        self.binary = binary
        self.bindir = bindir
        (self.dir / "bus.conf").write_text(_BUS_CONFIG)
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        if "\nsystemd-resolve:" not in "\n" + passwd:
            passwd += f"systemd-resolve:x:{RESOLVE_UID}:{RESOLVE_UID}::/:/usr/sbin/nologin\n"
        if "\nsystemd-resolve:" not in "\n" + group:
            group += f"systemd-resolve:x:{RESOLVE_UID}:\n"
        (self.dir / "passwd").write_text(passwd)
        (self.dir / "group").write_text(group)
        # Glibc in the namespace asks resolved's stub, as on a desktop that runs it.
        (Path("/etc/netns") / ns / "resolv.conf").write_text("nameserver 127.0.0.53\noptions edns0\n")
        d = self.dir
        script = (
            "set -e\n"
            "mount -t tmpfs tmpfs /run\n"
            f"mount --bind {d / 'passwd'} /etc/passwd\n"
            f"mount --bind {d / 'group'} /etc/group\n"
            "mkdir -p /run/dbus /run/systemd/resolve\n"
            "chown systemd-resolve:systemd-resolve /run/systemd/resolve\n"
            f"dbus-daemon --config-file={d / 'bus.conf'} --fork --nopidfile\n"
            f"{binary} >{d / 'resolved.log'} 2>&1 &\n"
            "echo started\n"
            "exec sleep 3600\n"
        )
        self.holder = topo.spawn(
            ns,
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "started":
            raise RuntimeError(f"systemd-resolved did not start: {self.log()}")
        self.enter = ("nsenter", "-t", str(self.holder.pid), "-m")
        deadline = time.monotonic() + 10
        while self.resolvectl("status", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"systemd-resolved does not answer on its bus: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        path = self.dir / "resolved.log"
        return path.read_text() if path.exists() else ""

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.topo.ns_run(self.ns, *self.enter, *cmd, check=check, timeout=timeout)

    def resolvectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.bindir / "resolvectl"), *args, check=check)


def start_dnsmasq(
    topo: Topology, ns: str, listen: str, answers: dict[str, str], log: Path
) -> subprocess.Popen[Any]:
    """A real resolver on ``listen`` in ``ns``: each domain of ``answers`` (and its subdomains) answers
    with that address, anything else is refused; every query is logged to ``log``."""
    cmd = [
        "dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        f"--listen-address={listen}",
        "--user=root",
        "--pid-file=",
        "--log-queries",
        f"--log-facility={log}",
        *(f"--address=/{name}/{address}" for name, address in answers.items()),
    ]
    proc = topo.spawn(ns, *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while "started" not in (log.read_text() if log.exists() else ""):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"dnsmasq did not start: {log.read_text() if log.exists() else ''}")
        time.sleep(0.05)
    return proc


class Capture:
    """tcpdump on ``device`` in ``ns`` with a filter; ``packets`` stops it and returns what it saw."""

    def __init__(self, topo: Topology, ns: str, device: str, bpf: str, path: Path) -> None:
        self.topo = topo
        self.path = path
        self.proc = topo.spawn(
            ns,
            "tcpdump",
            "-i",
            device,
            "-n",
            "-U",
            "-w",
            str(path),
            bpf,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "listening on" not in line:
            raise RuntimeError(f"tcpdump did not start: {line}")

    def packets(self) -> list[str]:
        self.topo.stop(self.proc)
        out = subprocess.run(
            ["tcpdump", "-r", str(self.path), "-n"], capture_output=True, text=True, check=False
        ).stdout
        return out.splitlines()
