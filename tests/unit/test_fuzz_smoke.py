"""Every fuzz target of `make fuzz` (fuzz/) runs for a few seconds and finds no crash.

Each target runs in its own process over a copy of its seeds (fuzz/corpus/<target>) and of the
inputs that crashed it once (fuzz/crashes-found/<target>-*), so a bug found before and fixed stays
fixed. The fastpath target runs the normal build here (`make fuzz` runs the ASan/UBSan one).

Every crash found so far (fuzz/crashes-found) is fixed: a target that crashes fails its test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "fuzz"
TARGETS = sorted(p.stem for p in (FUZZ / "targets").glob("*.py") if p.stem != "__init__")
SECONDS = 2


@dataclass
class Smoke:
    returncode: int
    runs: int
    crashes: list[str]
    log: str


def smoke(target: str, work: Path) -> Smoke:
    corpus = work / target / "corpus"
    crash_dir = work / target / "crashes"
    shutil.copytree(FUZZ / "corpus" / target, corpus)
    crash_dir.mkdir(parents=True)
    found = FUZZ / "crashes-found"
    for p in found.glob(f"{target}-*") if found.is_dir() else ():
        if p.suffix != ".txt":
            shutil.copy(p, corpus / p.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUZZ_", "LD_PRELOAD"))}
    env["FUZZ_CRASH_DIR"] = str(crash_dir)
    proc = subprocess.run(
        [sys.executable, str(FUZZ / "run.py"), target, str(corpus), f"-max_total_time={SECONDS}",
         "-max_len=4096", "-print_final_stats=1", "-timeout=30", f"-artifact_prefix={crash_dir}/"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    crashes = [p.read_text().splitlines()[0] for p in sorted(crash_dir.glob("*.txt"))]
    return Smoke(proc.returncode, int(runs[-1]) if runs else 0, crashes, log)


@pytest.fixture(scope="module")
def smokes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Smoke]:
    work = tmp_path_factory.mktemp("fuzz")
    with ThreadPoolExecutor(max_workers=2) as pool:  # two cores: two targets at a time
        return dict(zip(TARGETS, pool.map(lambda t: smoke(t, work), TARGETS), strict=True))


def test_every_target_has_seeds() -> None:
    assert set(TARGETS) >= {"gateway", "client", "control", "credential", "blind_credential", "document",
                            "request", "config", "fastpath"}  # fmt: skip
    for target in TARGETS:
        assert any((FUZZ / "corpus" / target).iterdir()), target


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_runs_without_crashing(smokes: dict[str, Smoke], target: str) -> None:
    result = smokes[target]
    assert result.returncode == 0, result.log[-3000:]
    assert result.runs > 10, result.log[-3000:]
    assert not result.crashes, "\n".join(result.crashes) + "\n\n" + result.log[-3000:]
