"""dvc.yaml lists every source file a stage runs: each stage's `ehrbert` modules, followed through their imports.

A stage whose deps miss a module it imports would be called up to date after that module changed; this test
derives the imports from the code (ast, transitively) and fails naming the stage and the missing files.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ehrbert"
MODULE_IN_COMMAND = re.compile(r"-m\s+(ehrbert(?:\.\w+)*)")


def module_file(name: str) -> Path | None:
    """The source file of module `name` inside the package (a package's __init__.py), or None."""
    path = ROOT / "src" / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """The `ehrbert` modules that the file imports (module-level or inside functions)."""
    package = ".".join(path.relative_to(ROOT / "src").with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.removesuffix(".__init__")
    else:
        package = package.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ehrbert")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if not base.startswith("ehrbert"):
                continue
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from ehrbert import text` imports a module
    return found


def closure(module: str) -> set[Path]:
    """Every package source file that running `module` executes: itself, its imports, and their packages' __init__."""
    files, todo = set(), [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
            path = module_file(".".join(parts[:i]))
            if path is not None and path not in files:
                files.add(path)
                todo += sorted(imported_modules(path))
    return files


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_the_import_walk_finds_known_imports():
    """The walk itself: the hybrid stage imports the hybrid model, which imports retrieval and the shared encoding
    loop."""
    files = {p.relative_to(PACKAGE).as_posix() for p in closure("ehrbert.hybrid")}
    assert {
        "hybrid.py",
        "models/hybrid.py",
        "models/retrieval.py",
        "models/encoding.py",
        "models/classifier.py",
        "text.py",
        "corpora/records.py",
        "stage.py",
    } <= files


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_cover_its_imports(name):
    stage = stages()[name]
    stage = stage.get("do", stage)  # a foreach stage: its template
    modules = MODULE_IN_COMMAND.findall(stage["cmd"])
    assert modules, f"dvc.yaml stage {name}: no `-m ehrbert...` in its command"
    needed = set().union(*(closure(m) for m in modules))
    deps = [dep for dep in stage.get("deps", []) if isinstance(dep, str)]
    missing = sorted(str(p.relative_to(ROOT)) for p in needed if p != PACKAGE / "__init__.py" and not covered(p, deps))
    assert not missing, f"dvc.yaml stage {name}: deps miss {missing}"
