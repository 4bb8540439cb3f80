"""Import report of a package: modules, cycles, in-function imports, flat modules, largest module.

    python tools/imports.py [PACKAGE_DIR]        # default: scoresde
    python tools/imports.py --list-inner         # also list every in-function import of our modules
    python tools/imports.py --check --max-inner 25   # CI: exit 1 on any import cycle or too many inner imports

Counts, from the source alone (nothing is imported):
- modules: the .py files of the package;
- flat: modules at the top of the package other than __init__/__main__;
- cycles: strongly connected components of the graph of module-level imports, and of the graph
  with in-function imports added (a cycle of either kind is a cycle);
- inner imports: `import`/`from` of our own modules inside a function or method body;
- largest module: by lines.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(mod: str, is_pkg: bool, node: ast.ImportFrom | ast.Import, known: set[str]) -> list[str]:
    """Our modules that an import statement names."""
    out = []
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name in known or a.name.split(".")[0] in {m.split(".")[0] for m in known}:
                out.append(a.name)
        return [m for m in out if m in known]
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if node.level:
        base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target not in known:
        return []
    for a in node.names:              # `from pkg import submodule` names the submodule
        sub = f"{target}.{a.name}"
        out.append(sub if sub in known else target)
    return out


def scan(root: Path):
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    known = {module_name(root, p) for p in files}
    top: dict[str, set[str]] = {m: set() for m in known}
    inner: dict[str, set[str]] = {m: set() for m in known}
    inner_list: list[tuple[str, int, str]] = []
    lines = {}
    for p in files:
        mod = module_name(root, p)
        src = p.read_text()
        lines[mod] = src.count("\n")
        tree = ast.parse(src)
        is_pkg = p.name == "__init__.py"

        def visit(node, in_func):
            for child in ast.iter_child_nodes(node):
                f = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    if isinstance(child, ast.ImportFrom) and child.module == "__future__":
                        continue
                    targets = [t for t in resolve(mod, is_pkg, child, known) if t != mod]
                    if targets:
                        (inner if in_func else top)[mod].update(targets)
                        if in_func:
                            inner_list.append((mod, child.lineno, ", ".join(sorted(set(targets)))))
                visit(child, f)
        visit(tree, False)
    return known, top, inner, inner_list, lines


def sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of size > 1 (or self-loops)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def parent_edges_removed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop a package's import of its own submodules (a package re-exporting its parts is no cycle
    unless the part imports the package back; that edge remains and closes the cycle)."""
    return {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("package", nargs="?", default="scoresde")
    ap.add_argument("--list-inner", action="store_true")
    ap.add_argument("--list-cycles", action="store_true")
    ap.add_argument("--check", action="store_true", help="exit 1 on an import cycle or more than --max-inner")
    ap.add_argument("--max-inner", type=int, default=25)
    a = ap.parse_args()
    root = Path(a.package).resolve()
    known, top, inner, inner_list, lines = scan(root)
    both = {m: top[m] | inner[m] for m in known}
    c_top = sccs(top)
    c_all = sccs(both)
    name = root.name
    flat = sorted(m for m in known if m.count(".") == 1 and not m.endswith(("__main__",)))
    flat = [m for m in flat if (root / (m.split(".")[1] + ".py")).exists()]
    big = max(lines, key=lines.get)
    print(f"package {name}: {len(known)} modules")
    print(f"flat modules at the top of {name}/ (besides __init__/__main__): {len(flat) - (f'{name}.__main__' in flat)}")
    print(f"module-level import cycles (strongly connected components): {len(c_top)}"
          f" ({sum(map(len, c_top))} modules)")
    print(f"import cycles counting in-function imports too: {len(c_all)} ({sum(map(len, c_all))} modules)")
    print(f"in-function imports of our own modules: {len(inner_list)}")
    print(f"largest module: {big} ({lines[big]} lines)")
    if a.list_cycles:
        for c in c_all:
            print("  cycle:", " <-> ".join(c))
    if a.list_inner:
        for mod, line, t in inner_list:
            print(f"  {mod}:{line} -> {t}")
    if a.check:
        problems = [f"import cycle: {' <-> '.join(c)}" for c in c_all]
        if len(inner_list) > a.max_inner:
            problems.append(f"{len(inner_list)} in-function imports of our modules, at most {a.max_inner} allowed "
                            "(an optional heavy dependency or the SDE shortcut; see --list-inner)")
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
