"""The layering of docs/ARCHITECTURE.md: a module imports only from layers to its left, and
no import, at module level or inside a function, closes a cycle between modules."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "saescope"

# Lower number = further left. A module may import from strictly lower layers (and itself).
LAYERS = {
    "native": -1,
    "lowp": -1,
    "version": -1,
    "atomic": -1,
    "errors": 0,
    "ops": 0,
    "precision": 0.5,
    "sparse": 0,
    "metrics": 0,
    "text": 0,
    "report": 0,
    "saes": 1,
    "data": 1,
    "toy": 1,
    "models": 1,
    "training": 2,
    "evaluate": 2,
    "activations": 2,
    "parallel": 2,
    "interop": 2,
    "runs": 3,
    "steer": 4,
    "analysis": 4,
    "evals": 4,
    "experiments": 5,
    "explore": 5,
    "cli": 6,
}
MAX_LINES = 400
LONG_MODULES = {
    "sparse.py": "the sparse path: codes, choosers, encode/decode and their shared backward",
}
"""Modules over MAX_LINES lines that read best whole (docs/ARCHITECTURE.md says why)."""


def _top(module_path: Path) -> str:
    rel = module_path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _module(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(("saescope", *parts))


def _imports(path: Path, type_checking: bool = False) -> set[str]:
    """Full names of the saescope modules a file imports (a name imported from a package that
    is itself a module counts as that module)."""
    found = set()
    tree = ast.parse(path.read_text())
    skip = set()
    if not type_checking:  # imports under `if TYPE_CHECKING:` never run
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "saescope":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if _exists(sub) else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "saescope")
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_module_has_a_layer():
    tops = {_top(p) for p in _files() if p.parent != SRC or p.name not in ("__init__.py",)}
    tops -= {"__main__"}
    assert tops <= set(LAYERS), tops - set(LAYERS)


def test_imports_point_left():
    bad = []
    for path in _files():
        if path.parent == SRC and path.name in ("__init__.py", "__main__.py"):
            continue  # the public API re-exports
        me = _top(path)
        for dep in {m.split(".")[1] for m in _imports(path) if m != "saescope"}:
            if dep in LAYERS and dep != me and LAYERS[dep] >= LAYERS[me]:
                bad.append(f"{path.relative_to(SRC)} imports {dep}")
        if "saescope" in _imports(path):
            bad.append(f"{path.relative_to(SRC)} imports the package saescope itself")
    assert not bad, bad


def test_imports_are_absolute():
    """Relative imports would slip past the layer and cycle checks."""
    relative = [
        f"{p.relative_to(SRC)}:{n.lineno}"
        for p in _files()
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.ImportFrom) and n.level > 0
    ]
    assert not relative, relative


def test_no_import_cycles():
    """Between modules, counting imports inside functions too: a cycle made "safe" by a lazy
    import is still a cycle."""
    graph = {_module(p): _imports(p) - {_module(p)} for p in _files()}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            raise AssertionError(" -> ".join([*stack[stack.index(node) :], node]))
        if node in done:
            return
        for dep in sorted(graph.get(node, ())):
            if dep != "saescope":
                visit(dep, [*stack, node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])


def test_modules_stay_short():
    long = {
        str(p.relative_to(SRC)): n
        for p in _files()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert set(long) <= set(LONG_MODULES), {k: v for k, v in long.items() if k not in LONG_MODULES}


def test_cli_modules_are_short():
    """A command parses, calls the library and prints: about 100 lines at most."""
    lines = {p.name: len(p.read_text().splitlines()) for p in (SRC / "cli").glob("*.py")}
    assert max(lines.values()) <= 110, lines


def test_explore_uses_the_public_api():
    """The web app imports other packages only through their `__init__` (../shared/DESIGN.md:
    explore never reaches into private modules): `from saescope.steer import steer_prompt`,
    not `from saescope.steer.prompt import ...` nor a submodule by name."""
    bad = []
    for path in sorted((SRC / "explore").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0):
                continue
            parts = node.module.split(".")
            if parts[0] != "saescope" or parts[1:2] == ["explore"]:
                continue
            deep = len(parts) > 2 or any(_exists(f"{node.module}.{a.name}") for a in node.names)
            if deep:
                bad.append(f"{path.relative_to(SRC)}:{node.lineno} imports from {node.module}")
    assert not bad, bad
