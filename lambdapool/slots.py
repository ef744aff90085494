"""The bounded set of warm connections one instance may hold (``max_per_instance``).

Lambda runs one invocation at a time, so it only ever uses the first slot. Cloud Functions
serves concurrent requests on threads (or tasks): each takes its own slot, never sharing a
connection, and waits for one when all are lent. Idle slots are handed out most recently
used first, so the warmest connection is reused and the others can idle out.
No background timers: they do not run in a frozen instance.
"""

from __future__ import annotations

import asyncio
from collections import deque
import threading
import time
from typing import Any, Callable

from lambdapool.errors import ConnectionUnavailable


def _exhausted(size: int, waited: float) -> ConnectionUnavailable:
    return ConnectionUnavailable(
        f"all {size} connections of this instance are lent to concurrent requests "
        f"(max_per_instance={size}); waited {waited:.2f}s. Raise max_per_instance, or lower the "
        "platform's per-instance concurrency"
    )


class _Bounded:
    def __init__(self, size: int, make: Callable[[], Any]) -> None:
        self.size = size
        self._make = make
        self._idle: list[Any] = []
        self.all: list[Any] = []

    def _free(self) -> Any:
        """An idle slot, or a new one while under the bound, else None (caller holds the lock)."""
        if self._idle:
            return self._idle.pop()
        if len(self.all) < self.size:
            holder = self._make()
            self.all.append(holder)
            return holder
        return None


class Slots(_Bounded):
    def __init__(self, size: int, make: Callable[[], Any]) -> None:
        super().__init__(size, make)
        # One plain lock, entered directly (C speed); the Condition on it is used only when
        # every slot is lent. threading's Semaphore and Condition.__enter__ are pure Python
        # and cost more than the rest of a warm invocation.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0

    def take_idle(self) -> Any:
        """A free slot, else None."""
        with self._lock:
            return self._free()

    def take(self, timeout: float) -> Any:
        """A free slot, waiting up to ``timeout`` seconds for one to be given back."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            while (holder := self._free()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _exhausted(self.size, timeout)
                self._waiting += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting -= 1
            return holder

    def give(self, holder: Any) -> None:
        with self._lock:
            self._idle.append(holder)
            if self._waiting:  # (notify() checks ownership the slow way: ~0.5 us)
                self._cond.notify()


class AsyncSlots(_Bounded):
    """The same on the instance's event loop: no locks (one thread), and no task or timer
    unless every slot is lent (asyncio.wait_for per acquire cost more than the query)."""

    def __init__(self, size: int, make: Callable[[], Any]) -> None:
        super().__init__(size, make)
        self._waiters: deque[asyncio.Future[Any]] = deque()

    def take_idle(self) -> Any:
        return self._free()

    async def take(self, timeout: float) -> Any:
        holder = self._free()
        if holder is not None:
            return holder
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await asyncio.wait({waiter}, timeout=max(0.0, timeout))
        if waiter.done() and not waiter.cancelled():
            return waiter.result()  # handed over by give(), in arrival order
        self._waiters.remove(waiter)
        waiter.cancel()
        raise _exhausted(self.size, timeout)

    def give(self, holder: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(holder)
                return
        self._idle.append(holder)
