"""docs/architecture.md names every module with its layer, and no import runs against
the layers: a module imports only its own layer and the layers below it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "omniq_tasks"
DOC = ROOT / "docs" / "architecture.md"


def table(header: str) -> list[list[str]]:
    """The rows of the markdown table whose header row starts with ``header``."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def layers() -> dict[str, set[str]]:
    """Layer -> the layers it may import."""
    out: dict[str, set[str]] = {}
    for name, may, _ in table("layer"):
        out[name] = {"*"} if may == "every layer" else {m.strip() for m in may.split(",")}
    return out


def module_layers() -> dict[str, str]:
    """Module path (omniq_tasks/...) -> its layer."""
    return {path: layer for path, layer, _ in table("module")}


def dotted(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def runtime_imports(path: Path) -> set[str]:
    """omniq_tasks modules ``path`` imports when it runs (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    package = dotted(path) if path.name == "__init__.py" else dotted(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from . import defaults`` imports the module defaults, not the package.
            submodules = [f"{module}.{alias.name}" for alias in node.names
                          if (ROOT / f"{module}.{alias.name}".replace(".", "/")).with_suffix(".py").exists()]
            candidates = submodules or [module]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for name in candidates:
            if name.startswith("omniq_tasks"):
                file = ROOT / (name.replace(".", "/") + ".py")
                init = ROOT / name.replace(".", "/") / "__init__.py"
                if file.exists():
                    found.add(str(file.relative_to(ROOT)))
                elif init.exists() and name != dotted(path):
                    found.add(str(init.relative_to(ROOT)))
    return found


def test_every_module_is_in_the_table_and_every_row_is_a_module() -> None:
    listed = module_layers()
    present = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")}
    assert sorted(present - set(listed)) == [], "add these modules to docs/architecture.md"
    assert sorted(set(listed) - present) == [], "docs/architecture.md lists modules that do not exist"
    assert set(listed.values()) <= set(layers())


def test_no_import_runs_against_the_layers() -> None:
    allowed = layers()
    where = module_layers()
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        mine = where[rel]
        for target in sorted(runtime_imports(path)):
            theirs = where[target]
            if "*" not in allowed[mine] and theirs not in allowed[mine]:
                wrong.append(f"{rel} ({mine}) imports {target} ({theirs})")
    assert wrong == []


def test_the_checker_sees_an_import_against_the_layers(tmp_path: Path) -> None:
    """A protocol module importing the worker is caught (the checker is not blind)."""
    sample = PACKAGE / "protocol" / "keys.py"
    assert "omniq_tasks/errors.py" in runtime_imports(sample)
    assert re.search(r"\| worker \| roots, protocol, tasks, worker \|", DOC.read_text(encoding="utf-8"))
    assert "worker" not in layers()["protocol"]
