"""Waiting for a condition with a deadline, never a bare sleep: the tests' one polling helper.

It lives in meshagent/testing/polling.py so that the harness there and the benchmarks use the
same code; tests import it from here.
"""

from meshagent.testing.polling import async_wait_for, wait_for

__all__ = ["async_wait_for", "wait_for"]
