"""bench/core.py keeps working (no timing is asserted: speed is measured in benchmarks, not tests)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest


def test_core_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(Path(__file__).parents[2] / "bench" / "core.py"))
    assert module["main"](["--rounds", "1", "--packets", "200", "--handshakes", "5"]) == 0
    out = capsys.readouterr().out
    for key in ("handshakes_per_second=", "seal_us=", "open_us=", "gateway_receive_datagram_us="):
        assert key in out
