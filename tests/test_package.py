"""The package's shape: no import circles, and no runtime or backend named outside its own module."""
import ast
import re
from pathlib import Path

from conftest import REPO
from lpr_sweep import quant, runtime

PACKAGE = REPO / "lpr_sweep"


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every lpr_sweep module -> the lpr_sweep modules it imports, at any depth of its code."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lpr_sweep"):
                for alias in node.names:  # `from lpr_sweep import x` imports the module x when there is one
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("lpr_sweep")}
        # A module of a package imports its package first; that edge is Python's, not a circle of ours.
        graph[name] = {m for m in found if m in modules and m != name and not name.startswith(m + ".")}
    return graph


def test_no_import_circles():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, "import circle: " + " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_the_pipeline_names_no_runtime_and_no_backend():
    text = (PACKAGE / "pipeline.py").read_text()
    for name in [*runtime.names(), *quant.names()]:
        assert not re.search(rf"[\"']{name}[\"']|\.name == ", text), name
