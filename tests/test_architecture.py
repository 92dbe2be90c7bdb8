"""The layering the code promises: no import cycles among modules of one package, pure
segmentation code that knows nothing of the web, a server that never imports the CLI
package (its one composition root) back, shipped packages that import neither the benchmarks
nor the tests, and proofreading that does not drag in the bulk pipeline. Read from the source,
TYPE_CHECKING imports included."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO


def imports(package: str) -> dict[str, set[str]]:
    """Module -> the project modules it imports (any nesting, any condition)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[module] = {name for name in found if name.split(".")[0] in
                         ("server", "segmentation", "promptcut", "benchmarks", "tests")}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[module] = 2
        path.pop()
        return []

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return []


@pytest.mark.parametrize("package", ["server", "segmentation", "promptcut"])
def test_no_import_cycles(package):
    assert cycle(imports(package)) == []


def test_the_server_does_not_import_the_cli_package():
    offenders = {m: sorted(t for t in targets if t.startswith("promptcut"))
                 for m, targets in imports("server").items()}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_segmentation_knows_nothing_of_the_web_or_the_cli():
    offenders = {m: sorted(t for t in targets if t.startswith(("server", "promptcut")))
                 for m, targets in imports("segmentation").items()}
    assert {m: t for m, t in offenders.items() if t} == {}


@pytest.mark.parametrize("package", ["promptcut", "segmentation", "server"])
def test_shipped_packages_import_no_benchmarks_or_tests(package):
    offenders = {m: sorted(t for t in targets if t.split(".")[0] in ("benchmarks", "tests"))
                 for m, targets in imports(package).items()}
    assert {m: t for m, t in offenders.items() if t} == {}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target in graph and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


@pytest.mark.parametrize("module", ["segmentation.proofread", "segmentation.session",
                                    "segmentation.evaluation", "server.app"])
def test_proofreading_does_not_import_the_bulk_pipeline(module):
    graph = {**imports("segmentation"), **imports("server")}
    assert "segmentation.pipeline" not in reachable(graph, module)
