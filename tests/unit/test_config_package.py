"""meshagent/agent/config is a package whose modules import one way (issue 17, item 7):
section.py <- the section modules <- core.py <- __init__.py. No import cycle (counting imports
inside functions and under TYPE_CHECKING), no private name imported from another module, and
each module imports alone (nothing of meshagent loaded before it)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import meshagent.agent.config as config_package

PACKAGE = "meshagent.agent.config"
PACKAGE_DIR = Path(config_package.__file__).parent
REPO = PACKAGE_DIR.parents[2]
MODULES = sorted(p.stem for p in PACKAGE_DIR.glob("*.py"))


def _imports(path: Path, module: str) -> Iterator[tuple[str, list[str]]]:
    """Every (imported module, imported names) of the file, wherever the import statement is."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield base, [alias.name for alias in node.names]


def _dotted(stem: str) -> str:
    return PACKAGE if stem == "__init__" else f"{PACKAGE}.{stem}"


def _package_edges() -> dict[str, set[str]]:
    """module stem -> the stems of the package it imports ("__init__" for the package itself)."""
    edges: dict[str, set[str]] = {}
    for stem in MODULES:
        targets: set[str] = set()
        for imported, names in _imports(PACKAGE_DIR / f"{stem}.py", _dotted(stem)):
            if imported == PACKAGE:
                # `from meshagent.agent.config import dns` names a submodule, else __init__.
                subs = [n for n in names if n in MODULES]
                targets.update(subs or ["__init__"])
            elif imported.startswith(PACKAGE + "."):
                targets.add(imported.split(".")[3])
        edges[stem] = targets - {stem}
    return edges


def test_the_modules_of_the_package_import_without_a_cycle() -> None:
    edges = _package_edges()
    done: set[str] = set()

    def visit(stem: str, trail: tuple[str, ...]) -> None:
        assert stem not in trail, "import cycle: " + " -> ".join([*trail, stem])
        if stem in done:
            return
        for target in sorted(edges[stem]):
            visit(target, (*trail, stem))
        done.add(stem)

    for stem in MODULES:
        visit(stem, ())


def test_the_layers_point_one_way() -> None:
    edges = _package_edges()
    sections = set(MODULES) - {"__init__", "core", "section"}
    assert edges["section"] == set(), "section.py imports nothing of the package"
    for stem in sections:
        assert edges[stem] <= sections | {"section"}, f"{stem}.py imports {edges[stem]}"
    assert "__init__" not in edges["core"]
    assert edges["__init__"] == {"core"}


def test_no_private_name_is_imported_from_the_config_package() -> None:
    offenders = []
    for root in ("meshagent", "benchmarks"):
        for path in sorted((REPO / root).rglob("*.py")):
            if PACKAGE not in path.read_text(encoding="utf-8"):
                continue
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            for imported, names in _imports(path, module):
                if imported == PACKAGE or imported.startswith(PACKAGE + "."):
                    offenders += [
                        f"{path.relative_to(REPO)}: {imported}.{n}"
                        for n in names
                        if n.startswith("_") and not n.startswith("__")
                    ]
    assert offenders == []


# Run in one child interpreter: before each module, every meshagent module is dropped from
# sys.modules, so each import starts from nothing of meshagent (third-party libraries stay
# loaded: they cannot take part in a cycle of ours, and reloading them costs seconds).
_ISOLATED_IMPORTS = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "meshagent" or m.startswith("meshagent.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=-3))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_each_module_imports_alone() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _ISOLATED_IMPORTS, *map(_dotted, MODULES)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
