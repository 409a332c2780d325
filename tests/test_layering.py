"""The packages' dependencies flow one way: trainer -> logstore <- phasefit <- reports.

Only the command line (phasefit/cli.py, and the demo and study beside it) imports across all
of them, and only inside its functions, so that ``phasefit --help`` stays fast and no package
needs another's heavy imports. No module may reach itself through its imports (an import
circle). The check reads the source, so it cannot silently come back.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = ("trainer", "logstore", "phasefit", "reports")
# What each package may import from this repository (besides the standard library and
# third-party packages).
ALLOWED = {
    "logstore": {"logstore"},
    "trainer": {"trainer", "logstore"},
    "phasefit": {"phasefit", "logstore"},
    "reports": {"reports", "phasefit", "logstore"},
}
COMMAND_LINE = {"phasefit.cli", "phasefit.demo", "phasefit.study"}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages under ``root``."""
    found = {}
    for package in PACKAGES:
        for file in sorted((root / package).rglob("*.py")):
            parts = file.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def imports(name: str, file: Path, known: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported module of this repository, line, at module level) for every import in ``file``."""
    tree = ast.parse(file.read_text(), str(file))
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # imports under a module-level if/try count as module level
        if isinstance(node, (ast.If, ast.Try)):
            top_level |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from a import b`` imports the module a.b when there is one, else a name of a
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import a.b.c`` of a non-module: its package
                target = target.rpartition(".")[0]
            if target and target != name:
                out.append((target, node.lineno, id(node) in top_level))
    return out


def layering_problems(root: Path) -> list[str]:
    """Every import against the flow, and every import circle, as one line each."""
    known = modules(root)
    graph: dict[str, set[str]] = {name: set() for name in known}
    problems = []
    for name, file in known.items():
        package = name.split(".")[0]
        for target, line, module_level in imports(name, file, known):
            graph[name].add(target)
            other = target.split(".")[0]
            where = f"{file.relative_to(root)}:{line}: {name} imports {target}"
            if name in COMMAND_LINE:
                if other != package and module_level:
                    problems.append(f"{where} at module level (the command line imports other packages lazily)")
            elif other not in ALLOWED[package]:
                problems.append(f"{where} (against trainer -> logstore <- phasefit <- reports)")
    problems += [f"import circle: {' -> '.join(cycle)}" for cycle in circles(graph)]
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each group of modules that import each other (Tarjan's strongly
    connected components, then a shortest way back within each)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(set(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for group in groups:
        start = min(group)
        paths, seen = [[start]], {start}
        while paths:  # breadth first, inside the group, back to start
            path = paths.pop(0)
            nxt = sorted(graph[path[-1]] & group)
            if start in nxt:
                out.append(path + [start])
                break
            for w in nxt:
                if w not in seen:
                    seen.add(w)
                    paths.append(path + [w])
    return out


def test_imports_flow_one_way_and_have_no_circles():
    problems = layering_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_the_check_finds_an_import_against_the_flow_and_a_circle(tmp_path):
    files = {
        "logstore/__init__.py": "",
        "logstore/schema.py": "import numpy\nfrom phasefit.curve import Curve\n",  # against the flow
        "trainer/__init__.py": "",
        "trainer/a.py": "from trainer import b\n",
        "trainer/b.py": "def f():\n    from trainer.a import x\n",  # a circle, even when lazy
        "phasefit/__init__.py": "",
        "phasefit/curve.py": "from . import errors\n",
        "phasefit/errors.py": "",
        "phasefit/cli.py": "from reports import site\n\ndef main():\n    from trainer import a\n",
        "reports/__init__.py": "",
        "reports/site.py": "from phasefit.curve import Curve\nfrom logstore.schema import X\n",
    }
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    problems = layering_problems(tmp_path)
    assert problems == [
        "logstore/schema.py:2: logstore.schema imports phasefit.curve (against trainer -> logstore <- phasefit <- reports)",
        "phasefit/cli.py:1: phasefit.cli imports reports.site at module level (the command line imports other packages lazily)",
        "import circle: trainer.a -> trainer.b -> trainer.a",
    ], problems
