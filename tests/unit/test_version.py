"""One version source: pyproject.toml's, as the installed distribution reports it."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import veilgate

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def test_the_version_comes_from_the_distribution_metadata() -> None:
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert importlib.metadata.version("veilgate") == declared
    assert veilgate.__version__ == declared


def test_veilgate_version_prints_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "veilgate", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out == f"veilgate {veilgate.__version__}\n"
