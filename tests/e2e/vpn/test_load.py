"""bench/load.py at small scale against a real gateway daemon: 20 sessions from one process.

The load generator of `make bench` (many clients, each its own socket, on the client core with
the compiled keys) must connect every session and carry each one's packets to the internet host;
over UDP and over TCP.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

import pytest

from veilgate.credentials import issue
from veilgate.protocol.crypto import KeyPair
from veilgate.testing import netns
from veilgate.testing.deploy import Deployment

pytestmark = pytest.mark.e2e

LOAD = Path(__file__).resolve().parents[3] / "bench" / "load.py"
SESSIONS = 20


def _run(deploy: Deployment, scenario: str, transport: str, creds: Path, **kw: object) -> dict[str, object]:
    topo = deploy.topo
    assert deploy.gateway_proc is not None
    cmd = [
        sys.executable, str(LOAD), "run", scenario, "--transport", transport,
        "--gateway", f"{netns.GATEWAY_V4}:{deploy.udp_port}", "--tcp-port", str(deploy.tcp_port),
        "--gateway-key", base64.b64encode(deploy.gateway_public()).decode(),
        "--gateway-pid", str(deploy.gateway_proc.pid), "--credentials", str(creds),
        "--sink", netns.INTERNET_V4, "--sink-ns", topo.internet, "--timeout", "20",
    ]  # fmt: skip
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    r = topo.ns_run(topo.client, *cmd, timeout=120)
    result: dict[str, object] = json.loads(r.stdout)
    return result


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_twenty_sessions_connect_and_carry_traffic(
    deploy: Deployment, tmp_path: Path, transport: str
) -> None:
    now = time.time()
    for name in ("first.txt", "second.txt"):
        lines = []
        for _ in range(SESSIONS):  # the generator's credentials file: private key and credential, base64
            key = KeyPair.generate()
            cred = issue(deploy.issuer, key.public, now).encode()
            lines.append(
                f"{base64.b64encode(key.private_bytes()).decode()} {base64.b64encode(cred).decode()}"
            )
        (tmp_path / name).write_text("\n".join(lines) + "\n")

    storm = _run(deploy, "storm", transport, tmp_path / "first.txt", sessions=SESSIONS)
    assert storm["all_connected"] is True, storm
    assert storm["connected"] == SESSIONS

    fair = _run(deploy, "fair", transport, tmp_path / "second.txt", sessions=SESSIONS, seconds=0.5)
    assert fair["all_connected"] is True, fair
    every = fair["all"]
    assert isinstance(every, dict)
    assert every["sessions"] == SESSIONS
    low, _ = every["min_max_mbit_s"]
    assert low > 0, f"a session delivered nothing: {fair}"
    # Fairness is a figure of `make bench`; half a second on a shared machine only shows it is computed.
    assert 0 < every["jain"] <= 1, fair


def test_scale_steps_report_idle_and_per_packet_cost(deploy: Deployment, tmp_path: Path) -> None:
    """The scale scenario at two small steps: the idle phase, one session sending with the rest
    idle, all sending in turn, and the gateway's keepalives per packet."""
    now = time.time()
    lines = []
    for _ in range(6):
        key = KeyPair.generate()
        cred = issue(deploy.issuer, key.public, now).encode()
        lines.append(f"{base64.b64encode(key.private_bytes()).decode()} {base64.b64encode(cred).decode()}")
    (tmp_path / "creds.txt").write_text("\n".join(lines) + "\n")
    scale = _run(deploy, "scale", "udp", tmp_path / "creds.txt", steps="2,6", seconds=0.5, rate=400, window=6)
    steps = scale["steps"]
    assert isinstance(steps, list) and [s["sessions"] for s in steps] == [2, 6], scale
    for step in steps:
        assert step["all_connected"] is True and step["gateway_idle_cpu_pct"] >= 0, step
        assert (step["few"]["senders"], step["all"]["senders"]) == (1, step["sessions"]), step
        for phase in (step["few"], step["all"]):
            assert phase["delivered"] > 0 and phase["gateway_cpu_us_per_packet"] > 0, step
            assert phase["keepalives_per_packet"] >= 0, step
