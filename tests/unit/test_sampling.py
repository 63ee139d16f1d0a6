"""The 5 sigma bound of tests/sampling.py."""

from __future__ import annotations

import pytest

from tests.sampling import assert_share, share_bound


def test_bounds_of_the_splits_the_suite_uses() -> None:
    assert share_bound(400, 0.5) == pytest.approx(50.0)  # 50/50 of 400: 150..250
    assert share_bound(1000, 0.8) == pytest.approx(63.25, abs=0.01)  # 80/20 of 1000: 737..863
    assert_share(250, 400, 0.5)
    with pytest.raises(AssertionError, match="5 sigma"):
        assert_share(251, 400, 0.5, "v1")
    with pytest.raises(AssertionError):
        assert_share(500, 1000, 0.8)  # a 50/50 split where 80/20 was asked
