"""systemd unit files for the three daemons (package data), and ``veilgate install-units``.

``veilgate-gateway@.service``, ``veilgate-client@.service`` and ``veilgate-provider@.service`` are
templates: the instance names the configuration, ``/etc/veilgate/<instance>.toml``. They ship with
``ExecStart=/usr/bin/veilgate``; ``install_units`` writes them with the path of the ``veilgate``
command that runs it (a virtual environment's, say).
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

UNITS = ("veilgate-gateway@.service", "veilgate-client@.service", "veilgate-provider@.service")
SHIPPED_COMMAND = "/usr/bin/veilgate"
DEFAULT_DIR = Path("/etc/systemd/system")
DEFAULT_USER = "veilgate"


def unit_text(name: str, command: str = SHIPPED_COMMAND) -> str:
    """A unit file's text, its ExecStart running ``command``."""
    text = resources.files("veilgate.systemd").joinpath(name).read_text()
    return text.replace(f"ExecStart={SHIPPED_COMMAND} ", f"ExecStart={command} ")


def this_command() -> str:
    """How to run the ``veilgate`` command that runs now, as an absolute path for ExecStart."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "veilgate":
        found = shutil.which(str(argv0)) if not argv0.is_absolute() else str(argv0)
        if found:
            return str(Path(found).absolute())
    return f"{Path(sys.executable).absolute()} -m veilgate"


def install_units(directory: Path, command: str | None = None) -> list[Path]:
    """Write the three unit files into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in UNITS:
        path = directory / name
        path.write_text(unit_text(name, command or this_command()))
        path.chmod(0o644)
        written.append(path)
    return written


def ensure_user(name: str) -> bool:
    """Create the system user the daemons drop to, with its own group, no home and no login shell;
    False if it existed already."""
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        pass
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "veilgate VPN daemons",
            name,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return True


__all__ = ["DEFAULT_DIR", "DEFAULT_USER", "UNITS", "ensure_user", "install_units", "unit_text"]
