"""The one event loop an instance keeps for its async handlers, and running coroutines on it.

A fresh loop per invocation (``asyncio.run``) would orphan the loop-bound connections that a
warm connection is made of, so async handlers run on one loop for the instance's life. Lambda
runs it in the calling thread, one invocation at a time; Cloud Functions serve requests on
several threads, so there it runs in a thread of its own. Frameworks that bring their own
loop (Mangum keeps the thread's loop) need none of this: a connection belongs to the loop it
was made on (``AsyncWarmConnection.loop``), and :func:`run_on` finishes with it there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


# One lock per loop, taken around run_until_complete: threads take turns on it. Retrying on
# "This event loop is already running" is not enough: run_until_complete wraps the coroutine in
# a task on the loop before run_forever finds the loop busy, so the thread that is running it
# may start that task, and a retry would wrap the same coroutine a second time.
_RUN_LOCKS: dict[int, threading.RLock] = {}


def _run_lock(loop: asyncio.AbstractEventLoop) -> Any:
    lock = _RUN_LOCKS.get(id(loop))
    return lock if lock is not None else _RUN_LOCKS.setdefault(id(loop), threading.RLock())


def run_when_free(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """``loop.run_until_complete(coro)``, taking turns with other threads that run the loop.

    Lambda gives an environment one invocation at a time, so the instance's loop is normally
    ours alone (the lock is then uncontended); a test or an app calling an async
    ``lambda_handler`` from several threads at once gets its calls run one after another
    instead of "This event loop is already running".
    """
    with _run_lock(loop):
        return loop.run_until_complete(coro)


def run_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], timeout: float = 5.0) -> None:
    """Run ``coro`` to its end on ``loop`` from synchronous code, wherever that loop is: idle
    (run it here), running in another thread (hand it over and wait), or running in this very
    thread below us (it cannot be waited for: it runs as a task once we return)."""
    if loop.is_running():
        if asyncio._get_running_loop() is loop:
            loop.create_task(coro)
            return
        asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)
        return
    run_when_free(loop, coro)


class InstanceLoop:
    """The instance's event loop, made on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        loop = self.loop
        if loop is None:
            with self._lock:  # (two threads may make the first call at once)
                if self.loop is None:
                    self.loop = asyncio.new_event_loop()
                loop = self.loop
        return loop

    def run(self, coro: Coroutine[Any, Any, T], *, threaded: bool = False) -> T:
        """Run ``coro`` on the instance's loop and return its result.

        ``threaded``: the caller is one of several threads (Cloud Functions): the loop runs in
        its own thread and each call waits for its coroutine there.
        """
        loop = self.get()
        if asyncio._get_running_loop() is not None:  # (no exception when there is none: hot path)
            threaded = True  # called from inside someone's loop: cannot block it
        if threaded or self.thread is not None:
            self._ensure_thread(loop)
            return asyncio.run_coroutine_threadsafe(coro, loop).result()
        return run_when_free(loop, coro)

    def cancel_pending(self) -> None:
        """Cancel the tasks a failed handler left on the loop (Mangum run from inside an async
        handler schedules its own) and let them unwind, so none is left half-run."""
        loop = self.loop
        if loop is None or loop.is_running() or loop.is_closed():
            return
        tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

    def _ensure_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(target=loop.run_forever, name="lambdapool-loop", daemon=True)
                self.thread.start()
