"""Test hosts that look like fresh servers to a shell: a network namespace of a ``Topology`` plus a
mount namespace of their own, in which /etc, /usr, /var/lib, /opt and /root are copy-on-write
overlays of the machine's (writes land in a tmpfs and vanish with the host) and /run and /tmp are
empty tmpfs. A command run there may write any path an operator's would (/etc/veilgate,
/etc/systemd/system, /etc/passwd, /opt/veilgate, /var/lib/...) and the machine sees none of it.

``systemctl`` and ``journalctl`` there are ``veilgate.testing.servicemanager`` (first on PATH, in
/usr/local/sbin), since no systemd runs as PID 1. Packages unpacked rather than installed (``make
deps`` unpacks unbound, whose installation would start a resolver on the machine) can be laid over
/etc and /usr of a host, as if installed there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from veilgate.testing.netns import Topology

OVERLAID = ("etc", "usr", "var/lib", "opt", "root")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_SHIM = """#!/bin/sh
exec {python} -m veilgate.testing.servicemanager {command} "$@"
"""


def package_root(unpacked: Path, workdir: Path) -> Path:
    """The files of packages unpacked into ``unpacked`` (by scripts/unpack-debian-packages.sh),
    rearranged for a merged-/usr system: /lib, /bin and /sbin moved under /usr."""
    root = workdir / "pkgroot"
    if root.exists():
        return root
    (root / "usr").mkdir(parents=True)
    (root / "etc").mkdir()
    for top in unpacked.iterdir():
        target = root / ("usr/" + top.name if top.name in ("lib", "bin", "sbin") else top.name)
        shutil.copytree(top, target, symlinks=True, dirs_exist_ok=True)
    return root


class MountHost:
    """A shell host in network namespace ``ns`` with its own mount namespace (see the module)."""

    def __init__(
        self,
        topo: Topology,
        ns: str,
        name: str,
        workdir: Path,
        *,
        hostname: str,
        hosts: dict[str, str],
        packages: Path | None = None,
        env: dict[str, str] | None = None,
        keep: tuple[Path, ...] = (),
    ) -> None:
        """``keep``: folders under /tmp the host must still see (the empty /tmp hides the rest);
        the virtual environment this Python runs from is always kept."""
        self.topo = topo
        self.ns = ns
        self.name = name
        self.env = env or {}
        """More environment for the commands run here (beside root's usual PATH, HOME, LANG)."""
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        mounts = ["set -e", f"mount -t tmpfs -o mode=0700 vgguide {self.dir}"]
        for sub in OVERLAID:
            upper, work = (
                self.dir / f"{sub.replace('/', '-')}.upper",
                self.dir / f"{sub.replace('/', '-')}.work",
            )
            lower = f"/{sub}"
            if packages is not None and (packages / sub).is_dir():
                lower = f"{packages / sub}:/{sub}"
            mounts += [
                f"mkdir -p {upper} {work}",
                f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} /{sub}",
            ]
        # A folder under /tmp stays reachable through a descriptor opened before /tmp is covered,
        # bound back in place after (without canonicalising, the kernel follows the descriptor).
        covered = Path("/tmp")  # noqa: S108 (the folder this host covers with its own)
        kept = sorted({p.resolve() for p in (Path(sys.prefix), *keep) if p.resolve().is_relative_to(covered)})
        mounts += [f"exec {3 + i}<{_quote(str(path))}" for i, path in enumerate(kept)]
        mounts += ["mount -t tmpfs -o mode=0755 tmpfs /run", "mount -t tmpfs -o mode=1777 tmpfs /tmp"]
        for i, path in enumerate(kept):
            mounts += [
                f"mkdir -p {_quote(str(path))}",
                f"mount -c --bind /proc/self/fd/{3 + i} {_quote(str(path))}",
            ]
        mounts += [f"exec {3 + i}<&-" for i in range(len(kept))]
        mounts.append("mkdir -p /usr/local/sbin")
        for command in ("systemctl", "journalctl"):
            mounts.append(
                f"printf '%s' {_quote(_SHIM.format(python=sys.executable, command=command))}"
                f" > /usr/local/sbin/{command}; chmod 755 /usr/local/sbin/{command}"
            )
        etc_hosts = "127.0.0.1 localhost\n::1 localhost\n" + "".join(f"{a} {n}\n" for n, a in hosts.items())
        mounts += [
            f"printf '%s' {_quote(etc_hosts)} > /etc/hosts",
            f"echo {hostname} > /etc/hostname",
            "printf '# no resolver configured\\n' > /etc/resolv.conf",
            "echo started",
            "exec sleep 86400",
        ]
        self.holder = topo.spawn(
            ns,
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "\n".join(mounts),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None and self.holder.stderr is not None
        if self.holder.stdout.readline().strip() != "started":
            raise RuntimeError(f"host {name} did not start: {self.holder.stderr.read()}")
        self.enter = ("nsenter", "-t", str(self.holder.pid), "-m")

    def command(self, script: str) -> list[str]:
        """``script`` under bash -e as root on this host, in /root, with root's usual environment."""
        env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb", "USER": "root", **self.env}
        return [
            *("ip", "netns", "exec", self.ns, *self.enter, "env", "-i"),
            *(f"{k}={v}" for k, v in env.items()),
            *("bash", "-e", "-o", "pipefail", "-c", f"cd /root\n{script}"),
        ]

    def start(self, script: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(script), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(script), input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"on {self.name}, exit {result.returncode}:\n{script}\n--- stdout ---\n{result.stdout}"
                f"\n--- stderr ---\n{result.stderr}"
            )
        return result

    def write(self, path: str, text: str) -> None:
        self.sh(f"mkdir -p {Path(path).parent} && cat > {path} <<'VEILGATE_EOF'\n{text}VEILGATE_EOF\n")

    def read(self, path: str) -> str:
        return self.sh(f"cat {path}").stdout


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
