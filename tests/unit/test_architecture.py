"""The layout's promises, checked on every import under src/veilgate.

Each package (and top-level module) of veilgate is a layer; ``LAYERS`` says which other layers
each may import. Every import counts: ``import veilgate.x``, ``from veilgate.x import y``,
``from veilgate import x``, relative imports, and imports inside functions or under
``TYPE_CHECKING``. The protocol core and the credentials do no I/O and read no clock, and they do
not reach the process environment even through a module they import: the driver decides what the
environment says (``fastpath.wanted``) and tells the core.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[2] / "src" / "veilgate"

_CORE = frozenset({"protocol", "credentials", "config"})
_IO = frozenset({"fastpath", "tun", "netfilter", "transport", "provider"})
_DAEMONS = frozenset({"driver", "gateway", "client"})

LAYERS: dict[str, frozenset[str]] = {
    # The sans-IO core, and what it is configured and authorised with.
    "protocol": frozenset(),
    "credentials": frozenset({"protocol"}),
    "config": frozenset(),
    # I/O: the compiled data path, devices, firewall, carriers, the provider service.
    "fastpath": frozenset({"protocol"}),
    "tun": frozenset(),
    "netfilter": frozenset(),
    "transport": frozenset({"protocol", "fastpath"}),
    "provider": frozenset({"protocol", "credentials", "config", "monitor", "systemd"}),
    # What an operator watches: log lines and the metrics endpoint.
    "monitor": frozenset(),
    # Running under a service manager: notifications, the privilege drop, the unit files.
    "systemd": frozenset({"config", "tun"}),
    # The daemons: they drive a core with I/O.
    "driver": _CORE | {"fastpath", "tun", "netfilter", "transport", "monitor", "systemd"},
    "gateway": _CORE | _IO | {"driver", "monitor", "systemd"},
    "client": _CORE | _IO | {"driver", "monitor", "systemd"},
    # Entry points and tools.
    "cli": _CORE | {"provider", "gateway", "client", "monitor", "systemd", "transport"},
    "testing": _CORE | _IO | _DAEMONS | {"cli", "monitor"},
    "demo": frozenset({"testing"}),
    "__main__": frozenset({"cli"}),
}
"""Layer -> the layers it may import (besides itself and the ``veilgate`` package's own module)."""

ISOLATED = ("protocol", "credentials")
"""Layers that do no I/O, read no clock and never reach the process environment."""

FORBIDDEN_IN_CORE = {
    "asyncio",
    "os",
    "select",
    "selectors",
    "signal",
    "socket",
    "subprocess",
    "threading",
    "time",
}
ENVIRONMENT = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}
"""What of ``os`` reaches the process environment."""


# ---------------------------------------------------------------------- reading the source


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    """Every module under ``root`` (a package directory) by its dotted name."""
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The modules ``path`` (module ``name``) imports anywhere in it, as absolute dotted names.

    ``from package import name`` counts as importing ``package.name`` where that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)
    return found


def layer_of(name: str) -> str | None:
    """``veilgate.x...`` -> ``x``; None for the ``veilgate`` package itself and other packages."""
    parts = name.split(".")
    if parts[0] != SRC.name or len(parts) == 1:
        return None
    return parts[1]


def closure(start: set[str], known: dict[str, Path]) -> set[str]:
    """The veilgate modules importing ``start`` runs: what they import, transitively, and the
    packages around each (importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first)."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen or name not in known:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(imports(known[name], name, known))
    return seen


def environment_reads(path: Path) -> list[str]:
    """Where ``path`` reaches the process environment through ``os`` (under any name it binds)."""
    tree = ast.parse(path.read_text())
    aliases = {"os"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update(a.asname for a in node.names if a.name == "os" and a.asname)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os" and not node.level:
            found += [
                f"line {node.lineno}: from os import {a.name}" for a in node.names if a.name in ENVIRONMENT
            ]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in ENVIRONMENT
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def layer_violations(root: Path, layers: dict[str, frozenset[str]]) -> list[str]:
    known = modules(root)
    bad = []
    for name, path in known.items():
        mine = layer_of(name)
        if mine is None:
            continue
        if mine not in layers:
            bad.append(f"{name}: layer {mine!r} is not declared in LAYERS")
            continue
        for target in sorted(imports(path, name, known)):
            theirs = layer_of(target)
            if theirs is not None and theirs != mine and theirs not in layers[mine]:
                bad.append(f"{name} imports {target}: {mine} may not import {theirs}")
    return bad


def environment_violations(root: Path, layers: tuple[str, ...]) -> list[str]:
    known = modules(root)
    start = {name for name in known if layer_of(name) in layers}
    bad = []
    for name in sorted(closure(start, known)):
        bad += [f"{name} ({where})" for where in environment_reads(known[name])]
    return bad


# ---------------------------------------------------------------------- the promises


def test_every_layer_is_declared() -> None:
    present = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    present |= {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    assert present - LAYERS.keys() == set()


def test_every_import_follows_the_layer_table() -> None:
    assert layer_violations(SRC, LAYERS) == []


def io_and_clock_imports(layer: str) -> list[str]:
    known = modules(SRC)
    bad = []
    for name, path in known.items():
        if layer_of(name) == layer:
            found = {target.split(".")[0] for target in imports(path, name, known)} & FORBIDDEN_IN_CORE
            bad += [f"{name} imports {module}" for module in sorted(found)]
    return bad


def test_protocol_core_imports_no_io_and_no_clock() -> None:
    assert io_and_clock_imports("protocol") == []


def test_credentials_read_no_clock() -> None:
    assert io_and_clock_imports("credentials") == []


def test_core_does_not_depend_on_the_outer_layers() -> None:
    known = modules(SRC)
    for name, path in known.items():
        if layer_of(name) == "protocol":
            outer = {layer_of(t) for t in imports(path, name, known)} - {None, "protocol"}
            assert not outer, f"{name} imports {sorted(o for o in outer if o)}"


def test_the_core_never_reaches_the_environment_even_indirectly() -> None:
    assert environment_violations(SRC, ISOLATED) == []


# ---------------------------------------------------------------------- the checks can fail


def _package(tmp: Path, files: dict[str, str]) -> Path:
    root = tmp / "veilgate"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_layer_check_sees_every_form_of_import(tmp_path: Path) -> None:
    forms = [
        "import veilgate.outer.x\n",
        "from veilgate.outer import x\n",
        "from veilgate import outer\n",
        "from ..outer import x\n",
        "def f() -> None:\n    from veilgate.outer.x import y\n",
        "import typing\nif typing.TYPE_CHECKING:\n    import veilgate.outer\n",
    ]
    for i, form in enumerate(forms):
        root = _package(
            tmp_path / str(i),
            {
                "__init__.py": "",
                "core/__init__.py": "",
                "core/m.py": form,
                "outer/__init__.py": "",
                "outer/x.py": "y = 1\n",
            },
        )
        table = {"core": frozenset[str](), "outer": frozenset({"core"})}
        assert layer_violations(root, table), form
        assert layer_violations(root, {"core": frozenset({"outer"}), "outer": frozenset()}) == [], form


def test_the_environment_check_follows_imports_and_packages(tmp_path: Path) -> None:
    reads = [
        "import os\nX = os.environ.get('A')\n",
        "import os as o\ndef f() -> str | None:\n    return o.getenv('A')\n",
        "from os import environ\n",
    ]
    for i, read in enumerate(reads):
        root = _package(
            tmp_path / str(i),
            {
                "__init__.py": "",
                "core/__init__.py": "",
                "core/m.py": "from veilgate.lower import quiet\n",
                "lower/__init__.py": read,  # runs when lower.quiet is imported
                "lower/quiet.py": "",
            },
        )
        assert environment_violations(root, ("core",)), read
    clean = _package(
        tmp_path / "clean",
        {
            "__init__.py": "",
            "core/__init__.py": "",
            "core/m.py": "import veilgate.lower.quiet\n",
            "lower/__init__.py": "import os\nSEP = os.sep\n",
            "lower/quiet.py": "",
            "other/__init__.py": "import os\nX = os.environ\n",  # not imported by the core
        },
    )
    assert environment_violations(clean, ("core",)) == []
