"""The layering of docs/ARCHITECTURE.md: a module imports only from layers to its left."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "saescope"

# Lower number = further left. A module may import from strictly lower layers (and itself).
LAYERS = {
    "native": -1,
    "errors": 0,
    "atomic": 0,
    "ops": 0,
    "sparse": 0,
    "metrics": 0,
    "text": 0,
    "report": 0,
    "saes": 1,
    "data": 1,
    "toy": 1,
    "models": 1,
    "train": 2,
    "evaluate": 2,
    "activations": 2,
    "steer": 3,
    "analysis": 3,
    "interop": 3,
    "experiments": 4,
    "explore": 4,
    "cli": 5,
}


def _top(module_path: Path) -> str:
    rel = module_path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "saescope" and len(parts) > 1:
                found.add(parts[1])
            elif parts[0] == "saescope" and isinstance(node, ast.ImportFrom):
                found.update(a.name for a in node.names)
    return found


def test_every_module_has_a_layer():
    tops = {_top(p) for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC}
    assert tops <= set(LAYERS), tops - set(LAYERS)


def test_imports_point_left():
    bad = []
    for path in SRC.rglob("*.py"):
        if path.parent == SRC and path.name in ("__init__.py", "__main__.py"):
            continue  # the public API re-exports
        me = _top(path)
        for dep in _imports(path):
            if dep in LAYERS and dep != me and LAYERS[dep] >= LAYERS[me]:
                bad.append(f"{path.relative_to(SRC)} imports {dep}")
    assert not bad, bad
