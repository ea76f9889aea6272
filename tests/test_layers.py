"""The import graph of mmlib points one way (DESIGN.md, "Which way imports point"): no cycles, the
data layer imports none of the others, models never import the trainer, the batch runner or the
command line, and a study is parsed (and the registries listed) without importing torch, pandas,
scipy, pyarrow, PIL or transformers. Every import counts, also those inside functions (a deferred
import is still a dependency)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mmlib"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # "from mmlib import report"
    return {name for name in found if name.startswith("mmlib")}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        graph[module] = {t for t in _imports(path, module) if t in files and t != module}
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_no_module_imports_itself_back():
    graph = import_graph()
    # ignore package __init__ re-exports: a package importing its own submodules is not a cycle
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("layer, forbidden", [
    ("data", {"extract", "io", "models", "train", "evaluate", "pipeline", "study", "batch", "report", "cli", "bench"}),
    ("models", {"data", "extract", "train", "pipeline", "study", "batch", "report", "cli", "bench", "storage"}),
    ("evaluate", {"data", "extract", "models", "train", "pipeline", "study", "batch", "report", "cli"}),
    ("extract", {"io", "models", "train", "pipeline", "study", "batch", "report", "cli"}),
    # the external formats sit on data and extract (Dataset, Features), under pipeline
    ("io", {"models", "train", "evaluate", "pipeline", "study", "batch", "report", "cli", "bench"}),
])
def test_layers_import_downward_only(layer, forbidden):
    wrong = sorted((m, t) for m, ts in import_graph().items() if _layer(m) == layer
                   for t in ts if _layer(t) in forbidden)
    assert not wrong, f"{layer} imports upward: {wrong}"


HEAVY = ("torch", "pandas", "scipy", "pyarrow", "PIL", "transformers")


@pytest.mark.parametrize("code", [
    "from mmlib.study import load_study; load_study('params/default.yaml')",
    "from mmlib.cli import main; main(['list', 'extractors'])",
    "from mmlib.cli import main; main(['list', 'models'])",
])
def test_parsing_a_study_and_listing_import_no_heavy_library(code):
    """A study is parsed and validated, and the registries listed, from the light modules alone
    (mmlib.data.spec, the model and extractor cards): none of torch, pandas, scipy, pyarrow, PIL
    or transformers is imported, so that these take a fraction of a second."""
    code += f"; import sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
