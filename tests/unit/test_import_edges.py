"""Package edges, read from the import statements (ast, no imports run):

- production code never imports test support: nothing in meshagent/ imports meshagent.testing
  or tests/, except meshagent/testing itself and the CLI module that wires the `dev` commands;
- onboard sits below the agent: meshagent/onboard never imports meshagent.agent;
- benchmarks never import tests/ (they may use meshagent.testing, which the package ships);
- the fast Envoy encoders are one seam: only meshagent/xds/translate imports
  meshagent.xds.translate.encode, and only through the package's public names (its modules
  are its own); the varint of meshagent/xds/wire.py serves the encoders and resources.py only.

Imports inside functions count as much as module-level ones.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "meshagent"
# The one production module allowed to import the simulators: `meshagent dev ...`.
DEV_CLI = PACKAGE / "agent" / "dev_cli.py"


def imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in path; `from a import b` yields a and a.b."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def offenders(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        {
            f"{path.relative_to(REPO)}:{line}: imports {module}"
            for path in paths
            for line, module in imported(path)
            if any(within(module, f) for f in forbidden)
        }
    )


def production_modules() -> list[Path]:
    testing = PACKAGE / "testing"
    return [p for p in sorted(PACKAGE.rglob("*.py")) if testing not in p.parents and p != DEV_CLI]


def test_production_code_never_imports_test_support() -> None:
    assert len(production_modules()) > 100  # the walk found the package
    assert offenders(production_modules(), ("meshagent.testing", "tests")) == []


def test_onboard_does_not_import_the_agent() -> None:
    onboard = sorted((PACKAGE / "onboard").rglob("*.py"))
    assert onboard
    assert offenders(onboard, ("meshagent.agent",)) == []


def test_benchmarks_do_not_import_tests() -> None:
    benchmarks = sorted((REPO / "benchmarks").glob("*.py"))
    assert benchmarks
    assert offenders(benchmarks, ("tests",)) == []


def test_the_check_sees_every_form_of_import(tmp_path: Path) -> None:
    """Given each way Python spells an import, when checked, then each is found."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import tests.polling\n"
        "from meshagent import testing\n"
        "def f():\n"
        "    from meshagent.testing.consul_sim import ConsulSimulator\n"
        "from . import relative\n"
        "import meshagent.testingx\n"
    )
    found = [module for _, module in imported(sample)]
    assert "tests.polling" in found
    assert "meshagent.testing" in found
    assert "meshagent.testing.consul_sim" in found
    assert not within("meshagent.testingx", "meshagent.testing")


ENCODE = PACKAGE / "xds" / "translate" / "encode"


def encode_modules() -> tuple[str, ...]:
    """The modules inside the encode package, as import names."""
    return tuple(f"meshagent.xds.translate.encode.{p.stem}" for p in ENCODE.glob("[!_]*.py"))


def test_only_the_translator_imports_the_encoders() -> None:
    outside = [p for p in production_modules() if PACKAGE / "xds" / "translate" not in p.parents]
    assert offenders(outside, ("meshagent.xds.translate.encode",)) == []


def test_the_encoders_are_used_through_their_public_names() -> None:
    assert len(encode_modules()) >= 4  # route, endpoint, cluster, wire
    others = [p for p in production_modules() if ENCODE not in p.parents]
    assert offenders(others, encode_modules()) == []


def test_only_the_encoders_and_resources_frame_wire_bytes() -> None:
    allowed = {PACKAGE / "xds" / "resources.py"}
    others = [p for p in production_modules() if ENCODE not in p.parents and p not in allowed]
    assert offenders(others, ("meshagent.xds.wire",)) == []
