"""Whether the compiled data path was built where it has to be.

Apart from tests/unit/test_fastpath.py on purpose: every test there is skipped when the extension
is missing, which is exactly when this one must run. setup.py builds the extension as optional, so
a compiler or header problem during ``pip install`` only prints a warning; ``.ci/run`` sets
``VEILGATE_REQUIRE_FASTPATH=1`` (it runs ``make test``, which installs gcc, python3-dev and
libssl-dev) and this test turns such a silent failure into a failed run.
"""

from __future__ import annotations

import importlib
import os
import shutil

import pytest

from veilgate import fastpath

REQUIRE_ENV = "VEILGATE_REQUIRE_FASTPATH"


def test_the_compiled_data_path_is_built_where_required() -> None:
    if os.environ.get(REQUIRE_ENV) != "1":
        if not fastpath.BUILT:
            pytest.skip(f"the compiled data path is not built ({REQUIRE_ENV}=1 makes this a failure)")
        return
    if fastpath.BUILT:
        return
    try:  # the reason the package's own import swallowed
        importlib.import_module("veilgate.fastpath._fastpath")
        reason = "it imports now"
    except ImportError as exc:
        reason = str(exc)
    compiler = shutil.which("gcc") or shutil.which("cc") or "none found"
    pytest.fail(
        f"{REQUIRE_ENV}=1 but the compiled data path is not built ({reason}); C compiler: {compiler}. "
        "Reinstall with `.venv/bin/pip install -e .` and read the build_ext output "
        "(gcc, python3-dev and libssl-dev are needed)."
    )
