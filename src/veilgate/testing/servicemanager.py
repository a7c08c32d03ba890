"""``systemctl`` and ``journalctl`` for a test host without systemd as PID 1.

The operator's guide (docs/operator.md) runs its commands in a mount namespace per host
(``veilgate.testing.hosts``), where this module is installed first on PATH as ``systemctl`` and
``journalctl``. It runs the unit files the guide installed, honestly but only in part:

- ``start`` (and ``enable --now``, ``restart``) reads the unit from /etc/systemd/system, else
  /lib/systemd/system (``NAME@INSTANCE.service`` from the template ``NAME@.service``, ``%i``
  expanded), leaves a supervisor process behind and returns when the service is up: for
  ``Type=notify``, once the main process sent ``READY=1`` on ``NOTIFY_SOCKET``; it fails when the
  process exits first or ``TimeoutStartSec`` passes. The supervisor makes ``RuntimeDirectory=`` and
  ``StateDirectory=``, applies ``UMask=``, reads ``EnvironmentFile=``, runs ``ExecStartPre=`` and
  ``ExecStart=`` (with a minimal environment, ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` from
  ``WatchdogSec=`` and ``JOURNAL_STREAM`` naming the captured standard error), aborts a main process
  that stops sending ``WATCHDOG=1`` and restarts it after a failure as ``Restart=on-failure`` says,
  and runs ``ExecStopPost=`` after it stops.
- ``reload`` runs ``ExecReload=`` (``$MAINPID`` expanded) and waits for ``RELOADING=1`` and then
  ``READY=1``.
- ``stop``, ``is-active``, ``status``; ``daemon-reload`` does nothing (units are read at each start).
- The sandboxing settings (``ProtectSystem=`` and the like) are not applied.

``journalctl [-u UNIT]... [-p PRIORITY] [-n N]`` prints what the services wrote to standard error
and standard output, filtered by the syslog priority prefix (``<4>``) the way the journal does;
a line without one counts as info.

State lives in /run/veilgate-testing-units of the host's namespace: per unit the supervisor's
events (``UNIT.events``), its captured output (``UNIT.log``), the main PID and the last STATUS=.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

STATE = Path("/run/veilgate-testing-units")
UNIT_DIRS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PRIORITIES = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}


class UnitError(Exception):
    pass


@dataclass
class Unit:
    name: str
    path: Path
    settings: dict[str, list[str]] = field(default_factory=dict)

    def get(self, key: str, default: str = "") -> str:
        values = self.settings.get(key)
        return values[-1] if values else default

    def all(self, key: str) -> list[str]:
        return [v for v in self.settings.get(key, []) if v]


def canonical(name: str) -> str:
    return name if "." in name.rsplit("@", 1)[-1] else name + ".service"


def seconds(text: str, default: float) -> float:
    """systemd's time spans as used in the units: '30s', '2min', '90', '500ms'."""
    if not text:
        return default
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)\s*(ms|min|s|m|h)?", text):
        total += float(number) * {"ms": 0.001, "min": 60, "m": 60, "h": 3600}.get(unit, 1)
    return total


def load_unit(name: str) -> Unit:
    name = canonical(name)
    instance = ""
    candidates = [name]
    if "@" in name:
        prefix, rest = name.split("@", 1)
        instance = rest.rsplit(".", 1)[0]
        candidates.append(f"{prefix}@.{rest.rsplit('.', 1)[1]}")
    for directory in UNIT_DIRS:
        for candidate in candidates:
            path = directory / candidate
            if path.exists():
                unit = Unit(name, path)
                section = ""
                for raw in path.read_text().splitlines():
                    line = raw.strip()
                    if not line or line.startswith(("#", ";")):
                        continue
                    if line.startswith("["):
                        section = line.strip("[]")
                        continue
                    if section == "Service" and "=" in line:
                        key, value = line.split("=", 1)
                        value = value.strip().replace("%i", instance).replace("%I", instance)
                        unit.settings.setdefault(key.strip(), []).append(value)
                return unit
    raise UnitError(f"Unit {name} not found.")


def paths(name: str) -> dict[str, Path]:
    return {k: STATE / f"{name}.{k}" for k in ("events", "log", "pid", "supervisor", "status", "notify")}


def events(name: str) -> list[str]:
    path = paths(name)["events"]
    return path.read_text().splitlines() if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_of(name: str, kind: str = "supervisor") -> int | None:
    path = paths(name)[kind]
    if not path.exists():
        return None
    if kind == "supervisor" and events(name)[-1:] == ["STOPPED"]:
        return None
    pid = int(path.read_text())
    return pid if alive(pid) else None


def active(name: str) -> bool:
    return events(name)[-1:] == ["ONESHOT-ACTIVE"] or pid_of(name, "pid") is not None


# ---- the supervisor


def _environment(unit: Unit) -> dict[str, str]:
    env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8"}
    for spec in unit.all("EnvironmentFile"):
        optional = spec.startswith("-")
        path = Path(spec.lstrip("-"))
        if not path.exists():
            if optional:
                continue
            raise UnitError(f"{unit.name}: EnvironmentFile {path} missing")
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                env[key.strip()] = value.strip().strip("\"'")
    return env


def _command(spec: str, env: dict[str, str]) -> tuple[list[str], bool]:
    """An Exec line as argv (``$VAR`` alone splits into words, ``${VAR}`` stays one), and whether a
    failure is ignored (the ``-`` prefix)."""
    ignore = False
    while spec and spec[0] in "-+@!:":
        ignore = ignore or spec[0] == "-"
        spec = spec[1:]
    argv: list[str] = []
    for word in shlex.split(spec):
        if re.fullmatch(r"\$[A-Za-z_]\w*", word):
            argv += env.get(word[1:], "").split()
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return argv, ignore


def supervise(name: str) -> int:
    unit = load_unit(name)
    files = paths(name)
    os.umask(int(unit.get("UMask", "0022"), 8))
    for key, base in (("RuntimeDirectory", Path("/run")), ("StateDirectory", Path("/var/lib"))):
        for entry in unit.all(key):
            for sub in entry.split():
                (base / sub).mkdir(mode=0o755, parents=True, exist_ok=True)
    log = files["log"].open("ab", buffering=0)
    st = os.fstat(log.fileno())
    env = _environment(unit)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with contextlib.suppress(FileNotFoundError):
        files["notify"].unlink()
    notify.bind(str(files["notify"]))
    files["notify"].chmod(0o777)  # as systemd's: a daemon that dropped root still reaches it
    notify.settimeout(0.2)
    stopping = False

    def record(line: str) -> None:
        with files["events"].open("a") as f:
            f.write(line + "\n")

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    watchdog = seconds(unit.get("WatchdogSec"), 0)
    restarts = 0
    code = 0
    while True:
        service_env = dict(env, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        if unit.get("Type", "simple") == "notify":
            service_env["NOTIFY_SOCKET"] = str(files["notify"])
        if watchdog:
            service_env["WATCHDOG_USEC"] = str(int(watchdog * 1e6))
        failed = False
        for spec in unit.all("ExecStartPre"):
            argv, ignore = _command(spec, env)
            result = subprocess.run(argv, stdout=log, stderr=log, env=service_env, check=False)
            if result.returncode != 0 and not ignore:
                record(f"EXIT {result.returncode} ExecStartPre")
                failed = True
                break
        if failed:
            return 1
        argv, _ = _command(unit.get("ExecStart"), env)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=service_env)
        files["pid"].write_text(str(proc.pid))
        record(f"STARTED {proc.pid}")
        if unit.get("Type", "simple") != "notify":
            record("READY=1")
        last_watchdog = time.monotonic()
        ready = False
        terminated_at: float | None = None
        while proc.poll() is None:
            if stopping and terminated_at is None:
                proc.send_signal(signal.SIGTERM)
                terminated_at = time.monotonic()
            if terminated_at is not None and time.monotonic() - terminated_at > seconds(
                unit.get("TimeoutStopSec"), 90
            ):
                proc.kill()
            try:
                message = notify.recv(4096).decode(errors="replace")
            except TimeoutError:
                message = ""
            except InterruptedError:
                continue
            for line in message.splitlines():
                if line in ("READY=1", "RELOADING=1", "STOPPING=1"):
                    ready = ready or line == "READY=1"
                    record(line)
                elif line == "WATCHDOG=1":
                    last_watchdog = time.monotonic()
                elif line.startswith("STATUS="):
                    files["status"].write_text(line[7:])
            if watchdog and ready and not stopping and time.monotonic() - last_watchdog > watchdog:
                record("WATCHDOG-TIMEOUT")
                proc.send_signal(signal.SIGABRT)
                last_watchdog = time.monotonic()
        code = proc.returncode
        record(f"EXIT {code}")
        if stopping or code == 0 or unit.get("Restart", "no") not in ("on-failure", "always"):
            break
        restarts += 1
        record(f"RESTART {restarts}")
        time.sleep(seconds(unit.get("RestartSec"), 0.1))
        if stopping:
            break
    for spec in unit.all("ExecStopPost"):
        argv, _ = _command(spec, env)
        subprocess.run(argv, stdout=log, stderr=log, env=env, check=False)
    files["pid"].unlink(missing_ok=True)
    record("STOPPED")
    return 0 if stopping else code


# ---- systemctl


def _wait(name: str, after: int, wanted: str, timeout: float, *, since: str | None = None) -> bool:
    """Wait for ``wanted`` among the unit's events after the first ``after`` ones (and after the
    event ``since`` there, when given); False when the service stopped first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = events(name)[after:]
        if since is not None:
            new = new[new.index(since) + 1 :] if since in new else []
        if wanted in new:
            return True
        if any(e.startswith(("EXIT", "STOPPED")) for e in new) and pid_of(name, "pid") is None:
            return False
        time.sleep(0.05)
    raise UnitError(f"Job for {name} timed out.")


def start(name: str) -> int:
    unit = load_unit(name)
    if pid_of(unit.name) is not None or active(unit.name):
        return 0
    STATE.mkdir(parents=True, exist_ok=True)
    before = len(events(unit.name))
    if unit.get("Type") == "oneshot":
        return oneshot(unit)
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "veilgate.testing.servicemanager", "supervise", unit.name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    paths(unit.name)["supervisor"].write_text(str(supervisor.pid))
    if not _wait(unit.name, before, "READY=1", seconds(unit.get("TimeoutStartSec"), 90)):
        print(
            f"Job for {unit.name} failed because the control process exited with error code.\n"
            f'See "systemctl status {unit.name}" and "journalctl -u {unit.name}" for details.',
            file=sys.stderr,
        )
        return 1
    return 0


def oneshot(unit: Unit) -> int:
    """Type=oneshot: its commands run to the end before start returns; with RemainAfterExit=yes it
    then counts as active (the supervisor file names this process, gone, so only the events say so)."""
    files = paths(unit.name)
    env = _environment(unit)
    with files["log"].open("ab") as log:
        for spec in unit.all("ExecStartPre") + unit.all("ExecStart"):
            argv, ignore = _command(spec, env)
            if subprocess.run(argv, stdout=log, stderr=log, env=env, check=False).returncode and not ignore:
                print(f"Job for {unit.name} failed: {' '.join(argv)} failed.", file=sys.stderr)
                return 1
    with files["events"].open("a") as f:
        f.write("ONESHOT-ACTIVE\n" if unit.get("RemainAfterExit") in ("yes", "true") else "STOPPED\n")
    return 0


def stop(name: str) -> int:
    name = canonical(name)
    if events(name)[-1:] == ["ONESHOT-ACTIVE"]:
        unit = load_unit(name)
        for spec in unit.all("ExecStop"):
            subprocess.run(_command(spec, _environment(unit))[0], check=False)
        with paths(name)["events"].open("a") as f:
            f.write("STOPPED\n")
        return 0
    supervisor = pid_of(name)
    if supervisor is None:
        return 0
    before = len(events(name))
    os.kill(supervisor, signal.SIGTERM)
    deadline = time.monotonic() + 100
    # Its last word is STOPPED (it may linger as a zombie of a parent that does not reap it).
    while "STOPPED" not in events(name)[before:] and alive(supervisor) and time.monotonic() < deadline:
        time.sleep(0.05)
    paths(name)["supervisor"].unlink(missing_ok=True)
    return 0


def reload(name: str) -> int:
    unit = load_unit(name)
    main = pid_of(unit.name, "pid")
    if main is None and events(unit.name)[-1:] == ["ONESHOT-ACTIVE"]:
        for spec in unit.all("ExecReload"):
            if subprocess.run(_command(spec, _environment(unit))[0], check=False).returncode:
                return 1
        return 0
    if main is None:
        print(f"{unit.name} is not active, cannot reload.", file=sys.stderr)
        return 1
    before = len(events(unit.name))
    env = dict(_environment(unit), MAINPID=str(main))
    for spec in unit.all("ExecReload"):
        argv, ignore = _command(spec, env)
        if subprocess.run(argv, check=False).returncode != 0 and not ignore:
            print(f"Job for {unit.name} failed: ExecReload failed.", file=sys.stderr)
            return 1
    if unit.get("Type", "simple") == "notify" and (
        not _wait(unit.name, before, "RELOADING=1", 10)
        or not _wait(unit.name, before, "READY=1", 30, since="RELOADING=1")
    ):
        print(f"Job for {unit.name} failed: the service stopped while reloading.", file=sys.stderr)
        return 1
    return 0


def status(name: str) -> int:
    name = canonical(name)
    main = pid_of(name, "pid")
    state = "active (running)" if main is not None else "inactive (dead)"
    print(f"● {name}\n     Active: {state}")
    if main is not None:
        print(f"   Main PID: {main}")
    status_file = paths(name)["status"]
    if status_file.exists():
        print(f'     Status: "{status_file.read_text()}"')
    return 0 if main is not None else 3


def systemctl(args: list[str]) -> int:
    words = [a for a in args if not a.startswith("-")]
    flags = {a for a in args if a.startswith("-")}
    if not words:
        raise UnitError("this systemctl knows: daemon-reload, enable, start, stop, restart, reload, status")
    verb, units = words[0], words[1:]
    quiet = "-q" in flags or "--quiet" in flags
    code = 0
    if verb == "daemon-reload":
        return 0
    for name in units:
        if verb in ("enable", "disable"):
            unit = load_unit(name)
            wants = Path("/etc/systemd/system/multi-user.target.wants") / unit.name
            if verb == "enable":
                wants.parent.mkdir(parents=True, exist_ok=True)
                if not wants.is_symlink():
                    wants.symlink_to(unit.path)
                    print(f"Created symlink {wants} → {unit.path}.", file=sys.stderr)
                if "--now" in flags:
                    code = code or start(name)
            else:
                wants.unlink(missing_ok=True)
                if "--now" in flags:
                    stop(name)
        elif verb == "start":
            code = code or start(name)
        elif verb == "stop":
            stop(name)
        elif verb == "restart":
            stop(name)
            code = code or start(name)
        elif verb == "reload":
            code = code or reload(name)
        elif verb == "is-active":
            up = active(canonical(name))
            if not quiet:
                print("active" if up else "inactive")
            code = code or (0 if up else 3)
        elif verb == "status":
            code = code or status(name)
        else:
            raise UnitError(f"this systemctl does not know {verb!r}")
    return code


# ---- journalctl


def journalctl(args: list[str]) -> int:
    units: list[str] = []
    priority = 7
    lines: int | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        value = args[i + 1] if i + 1 < len(args) else ""
        if arg in ("-u", "--unit"):
            units.append(value)
            i += 1
        elif arg in ("-p", "--priority"):
            top = value.split("..")[-1]
            priority = int(top) if top.isdigit() else PRIORITIES[top]
            i += 1
        elif arg in ("-n", "--lines"):
            lines = int(value)
            i += 1
        elif arg in ("-b", "--boot", "--no-pager", "-q", "--quiet"):
            pass
        else:
            raise UnitError(f"this journalctl does not know {arg!r}")
        i += 1
    known = sorted(p.name[: -len(".log")] for p in STATE.glob("*.log")) if STATE.exists() else []
    patterns = [canonical(u) for u in units] or ["*"]
    out: list[str] = []
    for name in known:
        if not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        for line in paths(name)["log"].read_text(errors="replace").splitlines():
            match = re.match(r"<([0-7])>(.*)", line)
            level, text = (int(match.group(1)), match.group(2)) if match else (6, line)
            if level <= priority:
                out.append(f"{name}: {text}")
    for line in out[-lines:] if lines else out:
        print(line)
    if not out:
        print("-- No entries --")
    return 0


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    try:
        if command == "supervise":
            return supervise(args[0])
        if command == "systemctl":
            return systemctl(args)
        if command == "journalctl":
            return journalctl(args)
    except UnitError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
    print(f"unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
