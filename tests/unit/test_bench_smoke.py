"""bench/core.py keeps working (no timing is asserted: speed is measured in benchmarks, not tests)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest


def test_core_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(Path(__file__).parents[2] / "bench" / "core.py"))
    assert (
        module["main"](["--rounds", "1", "--packets", "200", "--handshakes", "5", "--idle-samples", "3"]) == 0
    )
    out = capsys.readouterr().out
    for key in (
        "handshakes_per_second=",
        "seal_us=",
        "open_us=",
        "gateway_receive_datagram_us=",
        "seal_96B_after_idle_us=",
    ):
        assert key in out


def test_benchmark_rewrites_only_its_block_of_the_performance_page(tmp_path: Path) -> None:
    module = runpy.run_path(str(Path(__file__).parents[2] / "bench" / "compare.py"))
    write, begin, end = module["write_between_markers"], module["BEGIN"], module["END"]
    doc = tmp_path / "performance.md"
    write(doc, "first run")
    assert begin in doc.read_text() and "first run" in doc.read_text()
    doc.write_text(doc.read_text().replace(begin, "prose before\n" + begin) + "prose after\n")
    write(doc, "second run")
    text = doc.read_text()
    assert "second run" in text and "first run" not in text
    assert text.index("prose before") < text.index(begin) < text.index(end) < text.index("prose after")


def test_latency_study_event_loop_part_runs() -> None:
    module = runpy.run_path(str(Path(__file__).parents[2] / "bench" / "latency.py"))
    for direct in (False, True):
        first, chained = module["loop_wakeup_us"](direct, samples=8, gap=0.002)
        assert first > 0 and chained > 0
