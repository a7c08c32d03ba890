"""The layout's promises, checked: the protocol core does no I/O and reads no clock."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[2] / "src" / "veilgate"
FORBIDDEN_IN_CORE = {"asyncio", "socket", "os", "time", "select", "selectors", "subprocess", "threading"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_protocol_core_imports_no_io_and_no_clock() -> None:
    for path in sorted((SRC / "protocol").glob("*.py")):
        bad = imported_modules(path) & FORBIDDEN_IN_CORE
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_credentials_read_no_clock() -> None:
    for path in sorted((SRC / "credentials").glob("*.py")):
        bad = imported_modules(path) & FORBIDDEN_IN_CORE
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_core_does_not_depend_on_the_outer_layers() -> None:
    outer = {
        "gateway",
        "client",
        "transport",
        "tun",
        "netfilter",
        "provider",
        "cli",
        "testing",
        "credentials",
    }
    for path in sorted((SRC / "protocol").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("veilgate."):
                assert node.module.split(".")[1] not in outer, f"{path.name} imports {node.module}"
