"""The files adapter splits a text into its documents at '---' lines without a regex over
the whole text (issue 17: ~20 ms for a 10k-document file); the split is the one the
MULTILINE regexes give (the adapter's _MARKER and _UNSPLITTABLE, copied here), on random
texts made of the lines that matter."""

from __future__ import annotations

import random
import re

import pytest

from meshagent.adapters.files import split_documents

LINES = ["---", "--- ", "---\t", "---x", "----", "--- #c", "...", "...x", "%YAML 1.2",
         "a: 1", "\r", "---\r", "---\rX", "---\r\r", " ---", "x---", "-- -", "b: [1]", "",
         "#x"]  # fmt: skip


MARKER = re.compile(r"^---[ \t]*\r?$", re.MULTILINE)
UNSPLITTABLE = re.compile(r"^(?:%|\.\.\.|---[ \t]*[^ \t\r\n])", re.MULTILINE)


def _by_regex(text: str) -> list[tuple[int, str]] | None:
    """The split as the adapter made it before (the reference)."""
    if UNSPLITTABLE.search(text):
        return None
    chunks: list[tuple[int, str]] = []
    start = line = 0
    for match in MARKER.finditer(text):
        chunks.append((line, text[start : match.start()]))
        line += text.count("\n", start, match.end()) + 1
        start = match.end() + 1
    chunks.append((line, text[start:]))
    return chunks


@pytest.mark.parametrize("seed", range(4))
def test_the_split_is_the_regex_split(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(20000):
        text = "\n".join(rng.choice(LINES) for _ in range(rng.randrange(8)))
        text = rng.choice(("", "\n")) + text + rng.choice(("", "\n"))
        assert split_documents(text) == _by_regex(text), repr(text)


def test_a_large_file_splits_at_each_marker() -> None:
    docs = [f"kind: WorkloadEntry\nmetadata: {{name: w{i}}}\n" for i in range(1000)]
    split = split_documents("---\n".join(docs))
    assert split is not None and [text for _, text in split] == docs
    assert [line for line, _ in split] == [3 * i for i in range(1000)]
