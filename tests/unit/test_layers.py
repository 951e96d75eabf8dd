"""The package's import graph: no cycle, and no reach across layers (read from the source with ast).

Layers, from the bottom: the pure core (everything not named below: samples, detectors, policies,
engine, probes, guard, monitor, events, ...), the report (``report/``: reads event logs), and the entry
points (``cli.py``, ``__main__.py``, the package's ``__init__`` with its lazy public names) beside the Celery glue
(``worker/``, the only place that imports Celery, billiard or kombu). A module imports only from its own
layer or below; imports inside functions and under ``TYPE_CHECKING`` count too (a deferred import is
still a dependency). A cycle is looked for among module-level imports, the ones Python runs at import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "celery_memguard"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE  # read as text: a broken import graph still gets reported
CELERY = ("celery", "billiard", "kombu")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (before its imported names)."""
    if not node.level:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str, *, top_level_only: bool) -> set[str]:
    """Absolute names of what module ``name`` imports (a submodule when ``from pkg import sub`` names one)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    nodes = list(ast.walk(tree))
    if top_level_only:  # module level, including under if/try (not inside functions or classes)
        nodes = [n for stmt in tree.body for n in ast.walk(stmt)
                 if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 and not (isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test))]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, path.name == "__init__.py", node)
            subs = {f"{target}.{alias.name}" for alias in node.names} & MODULES.keys()
            found.update(subs or {target})
    return found


def layer(name: str) -> int:
    """0: core, 1: report, 2: entry points and Celery glue."""
    rest = name.removeprefix(PACKAGE).lstrip(".")
    if rest in ("", "cli", "__main__") or rest.split(".")[0] == "worker":
        return 2
    return 1 if rest.split(".")[0] == "report" else 0


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


class TestImportGraph:
    def test_the_graph_is_read(self) -> None:
        """The walk finds the package's modules and their imports (guards the test against reading nothing)."""
        assert {f"{PACKAGE}.guard", f"{PACKAGE}.worker.bootstep", f"{PACKAGE}.report.aggregate"} <= MODULES.keys()
        assert f"{PACKAGE}.engine" in imports(f"{PACKAGE}.guard", top_level_only=True)

    def test_no_cycle_among_module_level_imports(self) -> None:
        """No module imports itself back through others at import time."""
        graph = {name: {m for m in imports(name, top_level_only=True) if m in MODULES and m != name}
                 for name in MODULES}
        assert find_cycle(graph) is None

    def test_find_cycle_finds_one(self) -> None:
        """The cycle finder itself sees a cycle."""
        assert ["b", "c", "b"] == find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}})

    def test_no_module_imports_a_layer_above_its_own(self) -> None:
        """The core imports neither report/ nor worker/, cli or the package's lazy names; report/ not worker/."""
        upward = sorted(f"{name} -> {target}" for name in MODULES for target in imports(name, top_level_only=False)
                        if target in MODULES and layer(target) > layer(name))
        assert [] == upward

    def test_only_the_glue_imports_celery(self) -> None:
        """celery, billiard and kombu are imported only under worker/ (and by the CLI, which drives Celery)."""
        outside = sorted(f"{name} -> {target}" for name in MODULES if layer(name) < 2
                         for target in imports(name, top_level_only=False) if target.split(".")[0] in CELERY)
        assert [] == outside
