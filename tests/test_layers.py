"""docs/design.md's layer rule, checked on every import in the package: lower layers never import higher."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "reasonloop"

LAYERS = {  # docs/design.md's table
    "config": 0, "data": 0, "errors": 0,
    "algos": 1,
    "rewards": 2, "sandbox": 2,
    "tasks": 3, "agents": 3,
    "models": 4, "rollout": 4,
    "train": 5,
    "search": 6, "prm": 6,
    "selfimprove": 7,
    "distributed": 8,
    "recipes": 9, "frameworks": 9,
    "cli": 10, "configdoc": 10, "bench": 10, "console": 10, "__main__": 10,
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level reasonloop package) of every module-level or local import in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "reasonloop" and len(parts) > 1:
                out.append((node.lineno, parts[1]))
    return out


def test_every_package_has_a_layer():
    found = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert found <= set(LAYERS), f"add to docs/design.md and LAYERS: {sorted(found - set(LAYERS))}"


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        own = rel.parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        for line, target in imports_of(path):
            if target in LAYERS and LAYERS[target] > LAYERS[own]:
                violations.append(f"{rel}:{line} ({own}, layer {LAYERS[own]}) imports {target} (layer {LAYERS[target]})")
    assert not violations, "\n".join(violations)
