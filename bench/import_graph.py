"""lmrl's module import graph, read from the source's AST (nothing is imported).

One line per module, lmrl-internal edges only (a package that an import runs first, e.g.
lmrl.tasks for `from lmrl.tasks.sort import ...` outside lmrl.tasks, counts as an edge; lmrl's own
`__init__.py`, which every import runs, does not):

    lmrl.step -> lmrl.config, lmrl.deltas, lmrl.policies.hf*, ...

`*` marks an import that does not run when the module is imported: inside a function (lazy) or
under `if TYPE_CHECKING:`. Then the cycles among module-level imports, and what importing each
pure module loads at module level: lmrl modules (the packages above a module included, since
Python runs `lmrl/__init__.py` before any `lmrl.X`) and third-party top-level packages.

    .venv/bin/python bench/import_graph.py                   # this checkout's src/
    .venv/bin/python bench/import_graph.py --src OTHER/src   # another tree, e.g. a worktree

tests/test_layers.py imports `read_graph`, `cycles` and `loads` from here.
"""

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = "lmrl"
SRC = Path(__file__).resolve().parents[1] / "src"
# Modules whose import cost is printed: the math and the leaves that everything else builds on.
PURE = ("lmrl.deltas", "lmrl.losses", "lmrl.optim", "lmrl.config")


@dataclass
class Module:
    name: str
    eager: set[str] = field(default_factory=set)  # lmrl modules imported when this one is
    lazy: set[str] = field(default_factory=set)  # lmrl modules imported later, if at all
    external: set[str] = field(default_factory=set)  # third-party top-level packages, eager


def module_names(src: Path) -> dict[str, Path]:
    """{dotted name: file} for every module of the lmrl package under `src`."""
    names = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module):
    """(import node, runs at import time) for every import statement. Class bodies, `try` and
    plain `if` blocks run at import time; function bodies and `if TYPE_CHECKING:` do not."""
    def walk(node: ast.AST, eager: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, eager
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from walk(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                yield from walk(ast.Module(body=child.body, type_ignores=[]), False)
                yield from walk(ast.Module(body=child.orelse, type_ignores=[]), eager)
            else:
                yield from walk(child, eager)
    yield from walk(tree, True)


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool,
             known: set[str]) -> list[str]:
    """The modules an import statement names (an lmrl name that is not a module, e.g.
    `from lmrl.config import Config`, resolves to the module that defines it)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the package this module is in
        package = name if is_package else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if node.module else package
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in known else base)
    return out


def _packages(target: str, known: set[str]) -> list[str]:
    """The packages (with an __init__.py) that importing `target` runs first, lmrl's own left
    out: importing any module runs it. `lmrl.config -> lmrl.tasks.sort` loads lmrl.tasks too, so
    a module-level `from lmrl.config import ...` in tasks/__init__.py would be a cycle."""
    parts = target.split(".")
    return [p for p in (".".join(parts[:i]) for i in range(2, len(parts))) if p in known]


def read_graph(src: Path = SRC) -> dict[str, Module]:
    """{module: Module} for lmrl under `src`, from each file's AST."""
    files = module_names(src)
    known = set(files)
    graph = {}
    for name, path in files.items():
        module = graph[name] = Module(name)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, eager in _imports(tree):
            for target in _targets(node, name, path.name == "__init__.py", known):
                top = target.partition(".")[0]
                if top != ROOT:
                    if eager and top not in sys.stdlib_module_names:
                        module.external.add(top)
                    continue
                while target not in known:  # `import lmrl.x.name`: the module part
                    target = target.rpartition(".")[0]
                edges = module.eager if eager else module.lazy
                edges.update(p for p in _packages(target, known)
                             if not (name == p or name.startswith(p + ".")))  # runs already
                if target != name:
                    edges.add(target)
        module.lazy -= module.eager
    return graph


def cycles(graph: dict[str, Module]) -> list[list[str]]:
    """Cycles among module-level imports: for each strongly connected component with more than
    one module, its shortest cycle through its first module (by name), closed (a, b, a)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v].eager):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(_shortest_cycle(graph, c[0], set(c)) for c in components)


def _shortest_cycle(graph: dict[str, Module], start: str, within: set[str]) -> list[str]:
    paths, frontier = {start: [start]}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v].eager & within):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a cycle but none was found")


def loads(graph: dict[str, Module], name: str, parents: bool = True) -> tuple[set[str], set[str]]:
    """(lmrl modules, third-party packages) that `import name` loads at module level, itself
    included. With parents, the packages above each module count too (Python runs them first)."""
    seen, todo = set(), [name]
    while todo:
        v = todo.pop()
        if v in seen or v not in graph:  # a namespace package (no __init__.py) runs nothing
            continue
        seen.add(v)
        todo += graph[v].eager
        if parents and "." in v:
            todo.append(v.rpartition(".")[0])
    return seen, set().union(*(graph[v].external for v in seen))


def report(graph: dict[str, Module]) -> str:
    lines = [f"# {len(graph)} modules; * = not run on import (in a function or TYPE_CHECKING)"]
    for name in sorted(graph):
        m = graph[name]
        targets = sorted(m.eager) + sorted(t + "*" for t in m.lazy)
        lines.append(f"{name} -> {', '.join(sorted(targets)) or '(none)'}")
    found = cycles(graph)
    lines.append(f"\n# cycles among module-level imports: {len(found)}")
    lines += [" -> ".join(c) for c in found]
    lines.append("\n# what importing a pure module loads (module level, parent packages included)")
    for name in PURE:
        if name in graph:
            internal, external = loads(graph, name)
            internal.discard(name)
            lines.append(f"{name}: {len(internal)} lmrl modules ({', '.join(sorted(internal))}); "
                         f"third-party: {', '.join(sorted(external)) or '(none)'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=SRC,
                        help="the directory that holds the lmrl package (default: this repo's)")
    args = parser.parse_args()
    if not (args.src / ROOT / "__init__.py").is_file():
        parser.error(f"no {ROOT}/__init__.py under {args.src}")
    print(report(read_graph(args.src)))


if __name__ == "__main__":
    main()
