"""``make fuzz``: run every fuzz target for a number of executions and report the figures.

    .venv/bin/python fuzz/main.py [--execs N] [--seconds S] [--jobs J] [--targets a,b] [--no-sanitizer]

Each target runs in its own process (fuzz/run.py) over a working copy of its seeds
(``.fuzz/corpus/<target>``, seeded from the committed ``fuzz/corpus/<target>``), ``--jobs`` at a
time. A run that ends early (a sanitizer report, which stops libFuzzer) is started again for the
executions left, at most MAX_RESTARTS times. The fastpath target runs the ASan/UBSan build of the
compiled data path (fuzz/build-sanitized.sh, clang) unless ``--no-sanitizer``.

Prints one line per target, then ``fuzz_execs=N fuzz_crashes=C``; exits 1 if anything crashed.
Crash inputs and their tracebacks are under ``.fuzz/crashes`` (see fuzz/run.py).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = ROOT / ".fuzz"
TARGETS = (
    "gateway",
    "client",
    "control",
    "credential",
    "blind_credential",
    "document",
    "request",
    "config",
    "fastpath",
)
MAX_LEN = {"gateway": 2048, "client": 2048, "blind_credential": 1024, "fastpath": 8192}
MAX_RESTARTS = 5
_EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_DONE = re.compile(r"Done (\d+) runs")
_SANITIZER = re.compile(r"ERROR: (AddressSanitizer|UndefinedBehaviorSanitizer|LeakSanitizer)|runtime error:")


@dataclass
class Result:
    target: str
    execs: int = 0
    seconds: float = 0.0
    crashes: list[str] = field(default_factory=list)
    runs: int = 0
    note: str = ""


def sanitized_env(python: str) -> dict[str, str]:
    """The environment that loads the ASan/UBSan build of the compiled data path, or {} without clang."""
    if shutil.which("clang") is None:
        return {}
    built = subprocess.run(
        ["bash", str(HERE / "build-sanitized.sh"), python, str(WORK / "sanitized")],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    import atheris  # noqa: PLC0415  (only this needs it; --no-sanitizer runs without)

    return {
        "FUZZ_FASTPATH_SO": built,
        "LD_PRELOAD": str(Path(atheris.path()) / "asan_with_fuzzer.so"),
        # Python's own allocations through ASan's malloc; leaks at exit are the interpreter's.
        "PYTHONMALLOC": "malloc",
        "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1:abort_on_error=0",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    }


def run_target(
    target: str, execs: int, seconds: float, python: str, extra_env: dict[str, str], log_dir: Path
) -> Result:
    result = Result(target)
    corpus = WORK / "corpus" / target
    corpus.mkdir(parents=True, exist_ok=True)
    crash_dir = WORK / "crashes"
    crash_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **extra_env, "FUZZ_CRASH_DIR": str(crash_dir)}
    start, wall_start = time.monotonic(), time.time() - 1
    left = execs
    while result.runs <= MAX_RESTARTS and left > 0:
        remaining_time = seconds - (time.monotonic() - start) if seconds else 0
        if seconds and remaining_time < 1:
            break
        args = [
            python,
            str(HERE / "run.py"),
            target,
            str(corpus),
            str(HERE / "corpus" / target),
            f"-runs={left}",
            f"-max_len={MAX_LEN.get(target, 4096)}",
            "-print_final_stats=1",
            "-timeout=30",
            "-rss_limit_mb=4096",
            f"-artifact_prefix={crash_dir}/{target}-sanitizer-",
        ]
        if seconds:
            args.append(f"-max_total_time={int(remaining_time)}")
        log = log_dir / f"{target}.{result.runs}.log"
        with log.open("w") as out:
            proc = subprocess.run(
                args,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        result.runs += 1
        text = log.read_text(errors="replace")
        done = [int(m) for m in _EXECUTED.findall(text)] or [int(m) for m in _DONE.findall(text)]
        if done:
            ran = done[-1]
        else:  # stopped by a report before the final stats: the last progress line says how far it got
            marks = re.findall(r"^#(\d+)\s", text, re.MULTILINE)
            ran = int(marks[-1]) if marks else 0
        result.execs += ran
        left -= ran
        if _SANITIZER.search(text):
            report = text[_SANITIZER.search(text).start() :].splitlines()[0]  # type: ignore[union-attr]
            result.crashes.append(f"sanitizer: {report} (log {log})")
        elif proc.returncode != 0:
            result.crashes.append(f"exit status {proc.returncode} (log {log})")
            if ran == 0:
                break
        if proc.returncode == 0:
            break
    result.seconds = time.monotonic() - start
    for p in sorted(crash_dir.glob(f"{target}-*.txt")):
        if p.stat().st_mtime >= wall_start:  # written (again) by this run
            result.crashes.append(p.read_text().splitlines()[0] + f" ({p.with_suffix('')})")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--execs", type=int, default=int(os.environ.get("FUZZ_EXECS", "1000000")))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", "0")))
    parser.add_argument(
        "--jobs", type=int, default=int(os.environ.get("FUZZ_JOBS", str(os.cpu_count() or 1)))
    )
    parser.add_argument("--targets", default=os.environ.get("FUZZ_TARGETS", ",".join(TARGETS)))
    parser.add_argument("--no-sanitizer", action="store_true")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    python = sys.executable
    log_dir = WORK / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    sanitizer = {} if args.no_sanitizer or "fastpath" not in targets else sanitized_env(python)
    if "fastpath" in targets and not sanitizer:
        print(
            "fuzz: fastpath runs the normal build (no clang, or --no-sanitizer): no ASan/UBSan, no C coverage"
        )

    def one(target: str) -> Result:
        env = sanitizer if target == "fastpath" else {}
        r = run_target(target, args.execs, args.seconds, python, env, log_dir)
        if target == "fastpath":
            r.note = "ASan+UBSan, C coverage" if sanitizer else "normal build"
        rate = r.execs / r.seconds if r.seconds else 0.0
        print(
            f"fuzz_target={target} execs={r.execs} seconds={r.seconds:.0f} execs_per_second={rate:.0f} "
            f"crashes={len(r.crashes)}" + (f" ({r.note})" if r.note else ""),
            flush=True,
        )
        return r

    # The slow targets first, so that the quick ones fill the other core's time.
    order = sorted(targets, key=lambda t: t not in ("fastpath", "gateway", "client"))
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, order))
    total = sum(r.execs for r in results)
    crashes = [c for r in results for c in r.crashes]
    for r in results:
        for c in r.crashes:
            print(f"  crash in {r.target}: {c}")
    print(f"fuzz_execs={total} fuzz_crashes={len(crashes)}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
