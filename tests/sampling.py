"""Statistical assertions on traffic splits, at 5 standard deviations.

A weighted split is a binomial draw: n requests, each to the subset with probability p. At
3 sigma a healthy test still fails about once in 370 runs, which a suite of several such tests
run many times on busy machines turns into regular red builds; at 5 sigma it is once in 1.7
million, and a wrong split (say 50/50 for 80/20, or everything to one side) stays far outside
the bound for the sample sizes used here.
"""

from __future__ import annotations

import math

SIGMAS = 5.0


def share_bound(n: int, p: float, sigmas: float = SIGMAS) -> float:
    """How far the count of n draws with probability p may stray from n * p."""
    return sigmas * math.sqrt(n * p * (1.0 - p))


def assert_share(hits: int, n: int, p: float, what: object = "") -> None:
    """hits out of n is within 5 sigma of the expected n * p."""
    expected, bound = n * p, share_bound(n, p)
    assert abs(hits - expected) <= bound, (
        f"{hits} of {n}, expected {expected:.0f} ± {bound:.1f} (5 sigma): {what}"
    )
