"""The wheel, as a user installs it: built with ``python -m build``, installed with pip into a fresh
virtual environment, it carries the compiled data path and its license, and its ``veilgate`` runs a
gateway and a client that reach the internet host through the tunnel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import veilgate
from veilgate.testing import Topology, netns
from veilgate.testing.deploy import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).parents[2]


def _run(*cmd: str | Path, cwd: Path, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_the_wheel_installs_and_runs_a_session(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists() or shutil.which("nft") is None:
        pytest.skip("needs root, /dev/net/tun and nft for the session in namespaces")
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, ROOT, cwd=tmp_path)
    [wheel] = dist.glob("veilgate-*.whl")
    assert wheel.name.startswith(f"veilgate-{veilgate.__version__}-cp3")  # a platform wheel
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(f"veilgate-{veilgate.__version__}.dist-info/METADATA").decode()
        license_text = z.read(f"veilgate-{veilgate.__version__}.dist-info/licenses/LICENSE").decode()
    assert any(n.startswith("veilgate/fastpath/_fastpath.") and n.endswith(".so") for n in names)
    assert "veilgate/py.typed" in names
    assert "License-Expression: AGPL-3.0-or-later" in metadata
    assert license_text.startswith("                    GNU AFFERO GENERAL PUBLIC LICENSE\n")
    assert "Version 3, 19 November 2007" in license_text and len(license_text) > 34000

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    _run(venv / "bin" / "pip", "install", "-q", wheel, cwd=tmp_path)
    assert _run(venv / "bin" / "veilgate", "--version", cwd=tmp_path) == f"veilgate {veilgate.__version__}\n"
    where = _run(
        venv / "bin" / "python",
        "-c",
        "from veilgate import fastpath; from veilgate.fastpath import _fastpath; "
        "print(fastpath.BUILT, _fastpath.__file__)",
        cwd=tmp_path,
    ).split()
    assert where[0] == "True" and Path(where[1]).is_relative_to(venv)

    with Topology() as topo:
        deploy = Deployment(topo, tmp_path / "vg", veilgate=[str(venv / "bin" / "veilgate")])
        deploy.start_gateway()
        deploy.start_client("c1")
        status = deploy.wait_client("c1")
        assert status["data_path"] == "compiled" and deploy.gateway_status()["data_path"] == "compiled"
        ping = ["ping", "-c", "3", "-i", "0.2", "-W", "2", netns.INTERNET_V4]
        assert topo.ns_run(topo.client, *ping, check=False).returncode == 0
        deploy.stop_client("c1")
        assert deploy.stop_gateway() == 0
