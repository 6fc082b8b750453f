"""The package's shape, checked mechanically: which layer may import which (``../shared/DESIGN.md``), no
module importing one that imports it back, and pure layers free of I/O libraries.

Imports under ``if TYPE_CHECKING:`` are annotations only and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sidecar"

# layer -> the layers it may import at run time (besides itself)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "config": {"core"},
    "formats": {"core"},
    "policy": {"core", "config"},
    "providers": {"core", "config", "formats", "policy"},
    "state": {"core", "config", "policy"},
    "telemetry": {"core", "config", "formats", "policy", "providers", "__init__"},
    "routing": {"core", "config", "formats", "policy", "providers", "state", "telemetry"},
    "server": {"core", "config", "formats", "policy", "providers", "state", "telemetry", "routing", "__init__"},
    "injector": {"core", "config", "__init__"},
    "testing": {"core", "config", "formats"},
}
PURE = ("core", "formats", "policy")  # no network, no event loop, no OpenTelemetry
IO_LIBRARIES = ("aiohttp", "opentelemetry", "redis", "aiocache", "uvloop")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> set[str]:
    """Absolute module names ``path`` imports when it runs (TYPE_CHECKING blocks skipped)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = {_module_name(p): _runtime_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) in ALLOWED))
def test_imports_point_inward(module: str) -> None:
    layer = _layer(module)
    wrong = sorted(name for name in MODULES[module] if name.startswith("sidecar.") and name in MODULES
                   and _layer(name) not in ALLOWED[layer] | {layer})
    assert not wrong, f"{module} ({layer}) may not import {wrong}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) in PURE))
def test_pure_layers_do_no_io(module: str) -> None:
    wrong = sorted(name for name in MODULES[module] if name.split(".")[0] in IO_LIBRARIES)
    assert not wrong, f"{module} is pure and may not import {wrong}"


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = {m: {n for n in names if n in MODULES and n != m} for m, names in MODULES.items()}
    # a package's __init__ re-exporting its submodules is not a cycle of behaviour
    graph = {m: {n for n in deps if not m.startswith(n + ".") and not n.startswith(m + ".")}
             for m, deps in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep):], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
