"""``wait_for``: poll a condition until it holds, with a bound (tests wait for states, not times);
``arrive_and_wait``: a barrier across processes built on it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold in time (an AssertionError, so pytest reports it as a failure)."""

    __module__ = "lambdapool.tools.waiting"


def wait_for(condition: Callable[[], T], what: str = "condition", timeout: float = 10.0, interval: float = 0.01) -> T:
    """Call ``condition`` until it returns something true and return that; raise
    :class:`WaitTimeout` naming ``what`` if it has not after ``timeout`` seconds.

    ``timeout`` bounds a stuck wait; it is not a timing assumption. The condition is asked once
    more at the deadline, so a slow last poll still counts."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{what}: not reached within {timeout}s")
        time.sleep(interval)


def arrive_and_wait(directory: str, name: str, parties: int, timeout: float, interval: float = 0.01) -> bool:
    """A barrier across processes: leave a file ``name`` in ``directory`` and wait until
    ``parties`` files are there. Bounded: False after ``timeout`` seconds (the caller goes on, and
    its test's asserts judge what overlapped)."""
    with open(os.path.join(directory, name), "a"):
        pass
    try:
        wait_for(lambda: len(os.listdir(directory)) >= parties, "the barrier's parties", timeout, interval)
    except WaitTimeout:
        return False
    return True
