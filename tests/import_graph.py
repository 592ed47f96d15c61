"""The import graph of the package, one line per unit (a subpackage or a top-level module): what it imports.

    python tests/import_graph.py            # this checkout
    python tests/import_graph.py --lazy     # also imports made inside functions, marked (lazy)
    python tests/import_graph.py --root DIR # another checkout (e.g. a `git worktree` of an older commit)

Read from the source text with ``ast`` (nothing is imported), so it also works on old checkouts.
tests/test_layering.py holds the graph to DESIGN.md section 3.
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGE = "sparsecascade"


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for sparsecascade/ and kernels/ (installed as sparsecascade.kernels)."""
    found = {}
    for top, dotted in ((root / PACKAGE, PACKAGE), (root / "kernels", f"{PACKAGE}.kernels")):
        for path in sorted(top.rglob("*.py")):
            parts = list(path.relative_to(top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([dotted, *parts])] = path
    return found


def unit_of(module: str) -> str:
    """sparsecascade.ops.region_conv -> "ops"; sparsecascade.cascade -> "cascade"; the package itself -> "__init__"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported sparsecascade module, lazy) for every import in ``path``; lazy: inside a function."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, lazy) for a in child.names if a.name.split(".")[0] == PACKAGE)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] != PACKAGE:
                    continue
                for alias in child.names:   # `from . import losses` imports a module, not a name
                    sub = f"{target}.{alias.name}"
                    found.append((sub if sub in known else target, lazy))
            visit(child, inner)

    visit(tree, False)
    return found


def graph(root: Path, lazy: bool = True) -> dict[str, dict[str, bool]]:
    """unit -> {imported unit: True when every import of it is lazy}; imports inside a unit left out."""
    known = modules(root)
    edges: dict[str, dict[str, bool]] = {}
    for module, path in known.items():
        source = unit_of(module)
        edges.setdefault(source, {})
        for target, is_lazy in imports_of(module, path, known):
            dest = unit_of(target)
            if dest == source or (is_lazy and not lazy):
                continue
            edges[source][dest] = edges[source].get(dest, True) and is_lazy
    return edges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--lazy", action="store_true", help="also show imports made inside functions")
    args = parser.parse_args()
    for unit, targets in sorted(graph(args.root, lazy=args.lazy).items()):
        names = [f"{t} (lazy)" if is_lazy else t for t, is_lazy in sorted(targets.items())]
        print(f"{unit}: {', '.join(names) or '-'}")


if __name__ == "__main__":
    main()
