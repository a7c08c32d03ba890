"""The systemd side of the daemons: notifications, the watchdog tick, reload diffs, the user check,
and the unit files (checked by systemd-analyze) that ``veilgate install-units`` writes."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from veilgate.cli.main import main
from veilgate.config import ConfigError
from veilgate.gateway.config import GatewayConfig
from veilgate.systemd.notify import Notifier, Service, changed_fields
from veilgate.systemd.privileges import CAP_NET_ADMIN, run_as
from veilgate.systemd.units import UNITS


def abstract_listener() -> tuple[socket.socket, str]:
    name = f"@vgtest-{secrets.token_hex(6)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    sock.settimeout(2)
    return sock, name


def test_notifier_reaches_an_abstract_socket_and_clears_the_environment() -> None:
    sock, name = abstract_listener()
    env = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid()), "X": "1"}
    notifier = Notifier.from_environment(env)
    assert env == {"X": "1"}
    assert notifier.watchdog == 2.0
    notifier.send(READY=1, STATUS="3 sessions")
    assert sock.recv(100) == b"READY=1\nSTATUS=3 sessions"
    notifier.close()
    sock.close()


def test_watchdog_for_another_process_is_ignored() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog is None and not notifier.enabled
    notifier.send(READY=1)  # no socket: nothing happens


def test_service_ticks_the_watchdog_from_the_loop_and_reloads_between_reloading_and_ready() -> None:
    sock, name = abstract_listener()
    reloads: list[int] = []
    service = Service(
        "gateway",
        None,
        lambda: reloads.append(1),
        lambda: f"{len(reloads)} reloads",
        notifier=Notifier(name, 100_000),
    )

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        service.started(loop)
        await asyncio.sleep(0.12)
        os.kill(os.getpid(), 1)  # SIGHUP
        await asyncio.sleep(0.05)
        service.stopping()
        loop.remove_signal_handler(1)

    asyncio.run(scenario())
    messages = []
    sock.settimeout(0.2)
    while True:
        try:
            messages.append(sock.recv(200).decode())
        except TimeoutError:
            break
    sock.close()
    assert messages[0] == "READY=1\nSTATUS=0 reloads"
    assert "WATCHDOG=1" in messages[1:3]
    at = messages.index("RELOADING=1\nSTATUS=reloading the configuration")
    assert messages[at + 1] == "READY=1\nSTATUS=1 reloads"
    assert messages[-1] == "STOPPING=1\nSTATUS=stopping"
    assert reloads == [1]


def test_changed_fields_applies_the_live_ones_and_names_the_others(caplog: pytest.LogCaptureFixture) -> None:
    old = GatewayConfig(private_key=b"a" * 32, issuer_public_keys=[b"k" * 32])
    new = GatewayConfig(
        private_key=b"b" * 32, issuer_public_keys=[b"j" * 32], tun_name="vg9", log_level="debug"
    )
    with caplog.at_level(logging.WARNING, logger="veilgate"):
        live = changed_fields(old, new, {"issuer_public_keys", "log_level"}, "gateway")
    assert live == {"issuer_public_keys": [b"j" * 32], "log_level": "debug"}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "private_key changed: restart to apply (veilgate gateway keeps the running value)",
        "tun_name changed: restart to apply (veilgate gateway keeps the running value)",
    ]


def test_a_missing_user_is_one_configuration_error_naming_file_and_field(tmp_path: Path) -> None:
    name = f"vgnouser{secrets.token_hex(3)}"
    with pytest.raises(ConfigError) as err:
        run_as(name, {CAP_NET_ADMIN}, (), source=tmp_path / "gw.toml", field="gateway.user")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'gw.toml'}: gateway.user: no system user '{name}'")
    assert 'user = "root"' in message
    assert run_as("root", {CAP_NET_ADMIN}, (), source=None, field="gateway.user") is None


def test_install_units_writes_units_that_systemd_analyze_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing (make deps installs the systemd package)")
    assert main(["install-units", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in UNITS:
        unit = tmp_path / name
        assert f"wrote {unit}" in out
        text = unit.read_text()
        exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        assert Path(exec_start.split("=", 1)[1].split()[0]).is_absolute()
        assert (
            "Type=notify" in text and "WatchdogSec=" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
        )
        # An instance of the template, as systemctl would load it for /etc/veilgate/test.toml.
        instance = tmp_path / name.replace("@.", "@test.")
        instance.write_text(text)
        result = subprocess.run(
            ["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0 and result.stderr == "", result.stderr


def test_install_units_creates_the_system_user(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("creating a system user needs root and useradd")
    name = f"vgu{secrets.token_hex(4)}"
    try:
        assert main(["install-units", "--dir", str(tmp_path), "--user", name]) == 0
        entry = pwd.getpwnam(name)
        assert entry.pw_uid < 1000 and entry.pw_shell.endswith("nologin")
        assert f"created system user {name}" in capsys.readouterr().out
        assert main(["install-units", "--dir", str(tmp_path), "--user", name]) == 0
        assert f"kept the existing system user {name}" in capsys.readouterr().out
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
