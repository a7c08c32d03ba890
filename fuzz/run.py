"""Run one fuzz target under atheris (libFuzzer): ``python fuzz/run.py TARGET [libFuzzer args...]``.

``fuzz/targets/TARGET.py`` defines ``make() -> Callable[[bytes], None]``: the returned function
feeds one input to the code under test and returns, or raises. The code under test's documented
error types are caught inside the target; anything that escapes is a crash.

A crash does not stop the run (unless ``FUZZ_STOP_ON_CRASH=1``): the first input of each distinct
crash (exception type and where it was raised) is written to ``$FUZZ_CRASH_DIR`` (default
``.fuzz/crashes``) as ``TARGET-<signature hash>`` with a ``.txt`` beside it holding the traceback,
and fuzzing goes on to look for other bugs. fuzz/main.py counts those files. Sanitizer reports
(the compiled data path built with ASan/UBSan, see fuzz/build-sanitized.sh) end the process as
libFuzzer does.

Given files instead of corpus folders (libFuzzer's rule), the target runs each once: that is how
a crash file is reproduced.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _load_sanitized_fastpath() -> None:
    """Put the sanitized build of the compiled data path in place of the normal one (before any import)."""
    so = os.environ.get("FUZZ_FASTPATH_SO")
    if not so:
        return
    name = "veilgate.fastpath._fastpath"
    spec = importlib.util.spec_from_file_location(name, so)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {so}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def signature(exc: BaseException) -> str:
    """Type and place of a crash: the innermost frame in veilgate, or the harness's check message."""
    frames = traceback.extract_tb(exc.__traceback__)
    place = ""
    for frame in reversed(frames):
        if "/veilgate/" in frame.filename:
            place = f"{frame.filename.split('/veilgate/')[-1]}:{frame.lineno}:{frame.name}"
            break
    if not place and frames:
        place = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}"
    text = ""
    if isinstance(exc, AssertionError):  # the harness's own checks: the message says which
        text = re.sub(r"\d+", "N", str(exc).split(":")[0] + ":" + "".join(str(exc).split(":")[1:2]))
    kind = (
        type(exc).__qualname__
        if type(exc).__module__ == "builtins"
        else f"{type(exc).__module__}.{type(exc).__qualname__}"
    )
    return f"{kind} at {place} {text}".strip()


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    target = sys.argv[1]
    crash_dir = Path(os.environ.get("FUZZ_CRASH_DIR", ".fuzz/crashes"))
    stop = os.environ.get("FUZZ_STOP_ON_CRASH") == "1"
    _load_sanitized_fastpath()
    with atheris.instrument_imports(include=["veilgate"]):
        import common  # noqa: F401, PLC0415  (veilgate is imported here, under instrumentation)

        module = importlib.import_module(f"targets.{target}")
    one: Callable[[bytes], None] = module.make()
    seen: set[str] = set()

    def test_one_input(data: bytes) -> None:
        try:
            one(data)
        except Exception as exc:
            sig = signature(exc)
            if sig not in seen:
                seen.add(sig)
                digest = hashlib.blake2s(sig.encode(), digest_size=6).hexdigest()
                crash_dir.mkdir(parents=True, exist_ok=True)
                path = crash_dir / f"{target}-{digest}"
                path.write_bytes(data)
                text = "".join(traceback.format_exception(exc))
                path.with_suffix(".txt").write_text(f"{sig}\ninput: {data!r}\n\n{text}")
                print(f"\n==FUZZ CRASH== {target}: {sig}\n  input saved to {path}\n{text}", flush=True)
            if stop:
                raise

    atheris.Setup([sys.argv[0], *sys.argv[2:]], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
