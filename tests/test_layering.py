"""The package's imports run one way (DESIGN.md section 3), and packaging lists every subpackage.

The graph is read from the source (tests/import_graph.py), lazy imports inside functions included:
an upward import hidden in a method is still an upward import.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_graph import graph  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top; a unit imports only units of its own layer or below. A unit that is not listed fails
# the test: place it here, where its imports allow, when you add it.
LAYERS = [
    ("leaf utilities", {"kernels", "_atomic", "labelmaps", "inputs", "rho", "data"}),
    ("ops", {"ops"}),
    ("region execution", {"nn"}),
    ("cascade", {"cascade"}),
    ("backbones", {"models"}),
    ("zoo and hub", {"factory", "pretrained_cfg", "pretrained", "save", "hub", "zoo", "segment", "export"}),
    ("applications", {"losses", "metrics", "bn_init", "evaluate", "eval_report", "train", "bench", "cli",
                      "__main__", "__init__"}),
]
LAYER_OF = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}
# Inside a layer the arrows still run one way: these may import those.
SAME_LAYER = {
    "zoo and hub": [("factory", "pretrained_cfg"), ("factory", "zoo"), ("hub", "factory"), ("hub", "save"),
                    ("hub", "zoo"), ("hub", "pretrained_cfg"), ("pretrained", "save"), ("pretrained", "segment"),
                    ("pretrained", "pretrained_cfg"), ("save", "pretrained_cfg"), ("segment", "pretrained_cfg"),
                    ("factory", "pretrained"), ("hub", "pretrained"), ("pretrained", "zoo"), ("save", "zoo"), ("export", "factory")],
}


def test_every_unit_has_a_layer():
    units = set(graph(ROOT))
    assert not units - set(LAYER_OF), f"units with no layer in LAYERS: {sorted(units - set(LAYER_OF))}"


def test_imports_point_down():
    upward = []
    for source, targets in graph(ROOT).items():
        for target, lazy in targets.items():
            s, t = LAYER_OF.get(source), LAYER_OF.get(target)
            if s is None or t is None:
                continue   # test_every_unit_has_a_layer names them
            name = LAYERS[s][0]
            allowed = t < s or (t == s and (source, target) in SAME_LAYER.get(name, [])) or name == "applications"
            if not allowed:
                upward.append(f"{source} -> {target}{' (lazy)' if lazy else ''}")
    assert not upward, "imports that do not point down DESIGN.md's layers: " + "; ".join(sorted(upward))


def test_applications_layer_has_no_cycles():
    """Applications may import each other, but not in a circle (train -> bench -> train)."""
    edges = {s: {t for t in ts if LAYER_OF.get(t) == LAYER_OF["train"]}
             for s, ts in graph(ROOT).items() if LAYER_OF.get(s) == LAYER_OF["train"] and s != "__init__"}
    edges = {s: ts - {"__init__", "__main__"} for s, ts in edges.items()}
    done, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(node):] + [node])}")
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt)
        stack.pop()
        done.add(node)

    for node in sorted(edges):
        visit(node)


def test_model_registry_imports_no_family():
    tree = ast.parse((ROOT / "sparsecascade/models/registry.py").read_text())
    families = {p.stem for p in (ROOT / "sparsecascade/models").glob("*.py")} - {"__init__", "registry"}
    imported = {a.name.split(".")[-1] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    imported |= {(n.module or "").split(".")[-1] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & families, f"models/registry.py imports {sorted(imported & families)}"


@pytest.mark.parametrize("code", ["import sparsecascade", "import sparsecascade.cascade"])
def test_import_loads_no_backbone_family(code):
    families = sorted(p.stem for p in (ROOT / "sparsecascade/models").glob("*.py")
                      if p.stem not in {"__init__", "registry", "builder", "weights"})
    probe = (f"{code}; import sys; "
             f"print(sorted(m for m in sys.modules if m.rsplit('.', 1)[-1] in {families!r} "
             "and m.startswith('sparsecascade.models.')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"`{code}` imported backbone families: {out.strip()}"


def test_pyproject_lists_every_subpackage():
    """A subpackage missing from pyproject's list works in an editable install and is absent from the wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    present = {"sparsecascade." + ".".join(p.parent.relative_to(ROOT / "sparsecascade").parts)
               for p in (ROOT / "sparsecascade").rglob("__init__.py")}
    present = {p.rstrip(".") for p in present}
    present |= {"sparsecascade.kernels" + "".join("." + s for s in p.parent.relative_to(ROOT / "kernels").parts)
                for p in (ROOT / "kernels").rglob("__init__.py")}
    assert present <= listed, f"subpackages missing from pyproject.toml [tool.setuptools] packages: {sorted(present - listed)}"
