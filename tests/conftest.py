"""Shared pytest options."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    # Golden-file tests rewrite their expected output instead of comparing against it.
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="regenerate golden files (tests/unit/testdata/**.golden.yaml) from current output",
    )
