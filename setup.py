"""The optional compiled data path (src/veilgate/fastpath/*.c, one private header fastpath.h).

Everything else is declared in pyproject.toml. ``optional=True``: without a C compiler, the
Python headers or OpenSSL's, the build goes on without it and veilgate runs its pure-Python
data path (docs/performance.md says what each costs).
"""

from pathlib import Path

from setuptools import Extension, setup

FASTPATH = Path("src/veilgate/fastpath")

setup(
    ext_modules=[
        Extension(
            "veilgate.fastpath._fastpath",
            sorted(str(p) for p in FASTPATH.glob("*.c")),
            depends=[str(FASTPATH / "fastpath.h")],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
