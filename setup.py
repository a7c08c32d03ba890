"""The optional compiled data path (src/veilgate/fastpath/_fastpath.c).

Everything else is declared in pyproject.toml. ``optional=True``: without a C compiler, the
Python headers or OpenSSL's, the build goes on without it and veilgate runs its pure-Python
data path (docs/performance.md says what each costs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "veilgate.fastpath._fastpath",
            ["src/veilgate/fastpath/_fastpath.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
