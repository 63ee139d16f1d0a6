"""Every ```yaml block of README.md loads, so the README cannot drift from the code: a block with
`apiVersion:` is mesh configuration and must validate without errors or warnings (as `meshagent
validate`); any other block is an agent config (or a part of one) and must load with the config
loader. A block that is intentionally partial says so with the comment `# readme: partial` and
is skipped. Every `(#anchor)` link must name a heading.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshagent.agent.cli import main
from meshagent.agent.config import parse_config
from meshagent.errors import ConfigError

README = Path(__file__).resolve().parents[2] / "README.md"
PARTIAL = "# readme: partial"
FENCE = re.compile(r"^( *)```(\S*)\s*$")


def yaml_blocks(text: str) -> list[tuple[int, str]]:
    """(line of the opening fence, body without the fence's indentation) of each yaml block."""
    blocks: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang, start = len(opening.group(1)), opening.group(2), i + 1
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:])
            i += 1
        i += 1
        if lang == "yaml":
            blocks.append((start, "\n".join(body) + "\n"))
    return blocks


BLOCKS = yaml_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_yaml_examples() -> None:
    mesh = [b for _, b in BLOCKS if "apiVersion:" in b]
    assert len(BLOCKS) >= 6 and len(mesh) >= 2


@pytest.mark.parametrize(("line", "body"), BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_yaml_block_loads(
    line: int, body: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if PARTIAL in body:
        pytest.skip(f"README.md:{line} is marked {PARTIAL!r}")
    path = tmp_path / f"readme-{line}.yaml"
    path.write_text(body, encoding="utf-8")
    if "apiVersion:" in body:
        code = main(["validate", str(path)])
        out = capsys.readouterr().out
        assert code == 0 and out.endswith(", 0 warnings\n"), f"README.md:{line}: {out}"
    else:
        try:
            parse_config(body, path)
        except ConfigError as exc:
            hint = f"(a fragment on purpose? mark it {PARTIAL!r})"
            raise AssertionError(f"README.md:{line}: {exc} {hint}") from exc


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.lower())
    return text.strip().replace(" ", "-")


def test_readme_links_to_sections_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    prose = re.sub(r"^ *```.*?^ *```", "", text, flags=re.S | re.M)
    headings = re.findall(r"^#{1,6} +(.+)$", prose, flags=re.M)
    anchors = {github_anchor(h) for h in headings}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and not links - anchors, sorted(links - anchors)
