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


# ------------------------------------------------------------------------------------------ one owner of results paths

def _results_names() -> tuple[set[str], set[str]]:
    """(file names only a results directory has, every name harness/layout.py gives a file or folder): the module's
    string constants, read from its source."""
    from harness import layout

    names = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)} - {"%j"}
    names |= set(layout.BASE_CACHES.values()) | set(layout.EVAL_SIDE_FILES.values())
    generic = {n for n in names if n.isalpha() and n.islower()}  # runs, base, eval, logs...: also ordinary words
    return names - generic, names


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _help_texts(tree: ast.AST) -> set[int]:
    """String constants that are user-facing text: argparse help/description and error messages' `fix`/`where`."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in ("help", "description", "epilog", "fix"):
            out |= {id(n) for n in ast.walk(node.value)}
    return out


def _spellings(path: Path, distinctive: set[str], names: set[str]) -> list[str]:
    """Where `path` spells a results file name itself: a string that is one, a path joined with one (``d / "runs"``),
    or the step-NNNNNN pattern (a regex or an f-string)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree) | _help_texts(tree)
    hits = []
    for node in sorted(ast.walk(tree), key=lambda n: not isinstance(n, ast.BinOp)):  # joins first
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and side.value in names:
                    skip.add(id(side))
                    hits.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{node.lineno}: / {side.value!r}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            s = node.value
            if s in distinctive or "step-(" in s or "step-\\d" in s:
                hits.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{node.lineno}: {s!r}")
        elif isinstance(node, ast.JoinedStr) and id(node) not in skip:
            parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
            if any(p.endswith("step-") for p in parts):
                hits.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{node.lineno}: f-string step-...")
    return hits


def test_only_layout_names_results_files():
    """harness/layout.py is the one place that names a file or folder of results/ (ExperimentDir, RunDir and its
    constants); everything else asks it, so training, evaluation, the launcher and analysis never disagree."""
    distinctive, names = _results_names()
    assert {"plan.json", "metrics.jsonl", "DONE", ".lock", "audit.json"} <= distinctive
    hits = [h for m, p in _modules().items() if m != "harness.layout" for h in _spellings(p, distinctive, names)]
    assert not hits, "results file names spelled outside harness/layout.py (use its ExperimentDir/RunDir): " + \
        "; ".join(hits)


def test_the_owner_test_catches_spellings(tmp_path):
    """The check above fails on each kind of spelling it looks for (and not on docstrings or help text)."""
    distinctive, names = _results_names()
    bad = tmp_path / "bad.py"
    bad.write_text('"""plan.json in a docstring is fine."""\nimport re\n'
                   'a = exp / "runs" / rid / "config.yaml"\nb = re.compile(r"step-(\\d+)")\n'
                   'c = f"step-{s:06d}"\nd = root / "audit.json"\nparser.add_argument("--x", help="see plan.json")\n')
    hits = _spellings(bad, distinctive, names)
    assert len(hits) == 5, hits  # / "runs", "config.yaml", the regex, the f-string, "audit.json"


def _folder_graph() -> dict[str, set[str]]:
    """The import graph with each sub-package (harness/training, harness/evaluation, analysis/figures...) as one
    node and each top-level module (harness/grid.py, harness/modeling.py...) as its own."""
    mods = _modules()

    def node(m: str) -> str:
        parts = m.split(".")
        sub = len(parts) >= 3 or (len(parts) == 2 and mods[m].name == "__init__.py")
        return ".".join(parts[:2]) if sub else m

    out: dict[str, set[str]] = {}
    for m, deps in _graph().items():
        out.setdefault(node(m), set()).update(node(d) for d in deps if node(d) != node(m))
    return out


def test_no_folder_back_edges():
    """A folder (harness/training, harness/evaluation, ...) that imports a top-level module is never imported by it:
    the folders sit above harness/grid.py, harness/modeling.py and the other shared modules, not beside them
    (grid -> evaluation/identity and modeling -> training/freeze were two such back-edges)."""
    graph = _folder_graph()
    back = sorted(f"{a} -> {b} (and {b} -> {a})" for a, deps in graph.items() for b in deps
                  if a in graph.get(b, set()) and a < b)
    assert not back, back
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [n, d]))
            elif d not in state:
                visit(d, stack + [n])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    assert not cycles, cycles
