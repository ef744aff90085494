"""The bounded set of warm connections one instance may hold (``max_per_instance``).

Lambda runs one invocation at a time, so it only ever uses the first slot. Cloud Functions
serves concurrent requests on threads (or tasks): each takes its own slot, never sharing a
connection, and waits for one when all are lent. Idle slots are handed out most recently
used first, so the warmest connection is reused and the others can idle out.
No background timers: they do not run in a frozen instance.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from lambdapool.errors import ConnectionUnavailable


def _exhausted(size: int, waited: float) -> ConnectionUnavailable:
    return ConnectionUnavailable(
        f"all {size} connections of this instance are lent to concurrent requests "
        f"(max_per_instance={size}); waited {waited:.2f}s. Raise max_per_instance, or lower the "
        "platform's per-instance concurrency"
    )


H = TypeVar("H")  # a slot: the warm connection (sync or async) it holds


class _Bounded(Generic[H]):
    def __init__(self, size: int, make: Callable[[], H]) -> None:
        self.size = size
        self._make = make
        # Idle slots, most recently given back last. Callers on the warm path pop from it
        # directly (``idle.pop()``: one C call, atomic under the GIL) and fall back to
        # take_idle() when it is empty; only growing and waiting take the lock.
        self.idle: list[H] = []
        self.all: list[H] = []

    def _free(self) -> H | None:
        """An idle slot, or a new one while under the bound, else None (caller holds the lock)."""
        try:
            return self.idle.pop()
        except IndexError:
            pass
        if len(self.all) < self.size:
            holder = self._make()
            self.all.append(holder)
            return holder
        return None


class Slots(_Bounded[H]):
    def __init__(self, size: int, make: Callable[[], H]) -> None:
        super().__init__(size, make)
        # One plain lock, entered directly (C speed), and only off the warm path; the
        # Condition on it is used only when every slot is lent. threading's Semaphore and
        # Condition.__enter__ are pure Python and cost more than the rest of a warm invocation.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.waiting = 0  # threads in take()

    def take_idle(self) -> H | None:
        """A free slot (a new one while under the bound), else None."""
        with self._lock:
            return self._free()

    def take(self, timeout: float) -> H:
        """A free slot, waiting up to ``timeout`` seconds for one to be given back."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            # Counted as waiting before looking: a slot is given back by appending it to idle
            # and then looking for waiters (give(), the lender's finish_warm()), so either we
            # see its slot or it sees us and wakes us under the lock, which it can only take
            # once we wait. No wake-up is lost, and giving back takes no lock.
            self.waiting += 1
            try:
                while (holder := self._free()) is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise _exhausted(self.size, timeout)
                    self._cond.wait(remaining)
                return holder
            finally:
                self.waiting -= 1

    def give(self, holder: H) -> None:
        self.idle.append(holder)
        if self.waiting:
            self.wake()

    def wake(self) -> None:
        """A slot was just appended to idle: wake a waiter for it."""
        with self._lock:
            self._cond.notify()


class AsyncSlots(_Bounded[H]):
    """The same on the instance's event loop: no locks (one thread), and no task or timer
    unless every slot is lent (asyncio.wait_for per acquire cost more than the query)."""

    def __init__(self, size: int, make: Callable[[], H]) -> None:
        super().__init__(size, make)
        self.waiting: deque[asyncio.Future[H]] = deque()  # tasks in take(), first come first

    def take_idle(self) -> H | None:
        return self._free()

    async def take(self, timeout: float) -> H:
        holder = self._free()
        if holder is not None:
            return holder
        waiter: asyncio.Future[H] = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        await asyncio.wait({waiter}, timeout=max(0.0, timeout))
        if waiter.done() and not waiter.cancelled():
            return waiter.result()  # handed over by wake(), in arrival order
        self.waiting.remove(waiter)
        waiter.cancel()
        raise _exhausted(self.size, timeout)

    def give(self, holder: H) -> None:
        self.idle.append(holder)
        if self.waiting:
            self.wake()

    def wake(self) -> None:
        """A slot was just appended to idle: hand it to the first waiter still waiting."""
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(self.idle.pop())
                return
