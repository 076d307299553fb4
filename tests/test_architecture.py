"""The package's shape: files a newcomer can read, an import graph without circles, the mini-world in world/.

Imports are read from the source (ast), top-level and function-level alike: a function-level import may be
there for start-up time (the CLI, the launcher's jobs), never to hide a circle, so both kinds count."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "analysis")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _nodes(tree: ast.AST, top_level: bool):
    """Every node, or only those executed when the module is imported (not inside a function body)."""
    if not top_level:
        yield from ast.walk(tree)
        return
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def _imports(path: Path, name: str, mods: dict[str, Path], top_level: bool = False) -> set[str]:
    """Project modules `path` imports (``from a.b import c`` counts a.b.c when that is a module, else a.b)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in _nodes(tree, top_level):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                found.add(t)
    return found


def _graph(top_level: bool = False, packages: bool = False) -> dict[str, set[str]]:
    """module -> project modules it imports; with `packages`, also -> its parent packages (importing a.b.c
    runs a/__init__ and a/b/__init__ first: how harness.masking -> harness.data.tokenize -> harness.data ->
    harness.data.prepare -> harness.masking was a real circle although no line imported harness.data)."""
    mods = _modules()
    graph = {m: _imports(p, m, mods, top_level) for m, p in mods.items()}
    if packages:
        for m in graph:
            parts = m.split(".")
            graph[m] |= {".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in graph}
    return graph


def _benign(cycle: list[str]) -> bool:
    """A package whose __init__ imports its own submodules, each of which imports (the package of) a sibling:
    every module of the cycle lies inside the package of one of its implicit child -> parent edges."""
    for a, b in zip(cycle, cycle[1:]):
        if a.startswith(b + ".") and all(m == b or m.startswith(b + ".") for m in cycle):
            return True
    return False


def test_no_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them by the question each part answers): {long}"


def test_import_graph_has_no_circle():
    graph = _graph(packages=True)
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cyc = stack[stack.index(n):] + [n]
                if not _benign(cyc):
                    cycles.append(cyc)
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_only_world_knows_the_mini_world():
    """No module outside harness/world imports it, except the CLI that wires `harness world` and the demo."""
    graph = _graph()
    users = sorted(m for m, deps in graph.items() if not m.startswith("harness.world")
                   and any(d.startswith("harness.world") for d in deps))
    assert users == ["harness.cli"], users
    # names only the mini-world defines (generic conventions such as sft_train.jsonl are shared by design)
    world_names = ("eval_heldout_bios", "world_qa", "world_facts")
    mods = _modules()
    leaks = {m: [w for w in world_names if w in mods[m].read_text(encoding="utf-8")] for m in mods
             if m.startswith("harness") and not m.startswith("harness.world")}
    assert not {m: w for m, w in leaks.items() if w}, leaks


def test_low_level_modules_stay_low():
    """The schema, the file helpers, the layout, the eval identity, the grid and the launcher import no
    torch-heavy layer when they are imported: `harness run` plans and submits without torch (its jobs import
    training and evaluation inside the worker process), and analysis reads results without it."""
    graph = _graph(top_level=True)

    def closure(m: str) -> set[str]:
        seen, todo = set(), [m]
        while todo:
            for n in graph[todo.pop()]:
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen

    for low in ("harness.config", "harness.fsio", "harness.layout", "harness.versions", "harness.evaluation.identity",
                "harness.grid", "harness.launch.submit", "harness.launch.status"):
        high = {d for d in closure(low) if d.startswith(("harness.training", "harness.evaluation.evaluat",
                                                        "harness.evaluation.lm_eval", "harness.modeling", "analysis"))}
        assert not high, f"{low} reaches {sorted(high)}"
