"""Freeze, thaw and kill an instance's process group, as the platforms do to a sandbox.

Signals go to the whole process group (the instance's leader made it with ``setpgrp``), so
threads and children a handler started are frozen and killed with it. Delivery is
asynchronous: :func:`freeze` returns once the leader is really stopped (state ``T`` in
``/proc/PID/stat``), so a caller that checks afterwards sees what the platform would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (R, S, T, Z, ...) or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: the state follows the last ')'.
    return data[data.rindex(b")") + 2 : data.rindex(b")") + 3].decode()


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group is gone."""
    if pgid <= 1:  # 0 is our own group and 1 init's: never a sandbox of ours
        raise ValueError(f"refusing to signal process group {pgid}")
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def stop_group(pgid: int) -> None:
    signal_group(pgid, signal.SIGSTOP)


def thaw(pgid: int) -> None:
    signal_group(pgid, signal.SIGCONT)


def _settled(pid: int) -> bool | None:
    """True once ``pid`` is stopped, False if it is gone, None while it still runs."""
    state = proc_state(pid)
    if state in ("T", "t"):
        return True
    return False if state in (None, "Z", "X") else None


def _pauses() -> Iterator[float]:
    """0.5 ms, doubling up to 10 ms: quick when the stop is quick, cheap when a hundred wait."""
    pause = 0.0005
    while True:
        yield pause
        pause = min(pause * 2, 0.01)


async def wait_stopped(pid: int, timeout: float = 5.0) -> bool:
    """Poll until ``pid`` is stopped (``T``): True, or gone or still running at ``timeout``: False."""
    deadline, pauses = time.monotonic() + timeout, _pauses()
    while (settled := _settled(pid)) is None and time.monotonic() < deadline:
        await asyncio.sleep(next(pauses))
    return bool(settled)


def wait_stopped_sync(pid: int, timeout: float = 5.0) -> bool:
    """:func:`wait_stopped` for callers outside an event loop."""
    deadline, pauses = time.monotonic() + timeout, _pauses()
    while (settled := _settled(pid)) is None and time.monotonic() < deadline:
        time.sleep(next(pauses))
    return bool(settled)


async def thaw_fully(pid: int, timeout: float = 2.0) -> None:
    """SIGCONT the group and wait until every thread of ``pid`` is asleep again (``S``), so that
    a signal sent next is handled by the main thread.

    Coming out of a stop, each thread passes through the kernel's signal delivery once more
    (state ``R`` until it has run): a process-wide signal sent then may be taken by whichever
    thread gets there first. Python runs handlers only in the main thread, and awslambdaric's
    main thread waits in a lock for the thread polling ``GET /next``: if that thread takes
    SIGTERM, the main thread sleeps on and the handler never runs. A thread seen asleep has run
    since the thaw and left that path. (A thread that keeps running ends the wait at ``timeout``.)
    """
    thaw(pid)
    deadline, pauses = time.monotonic() + timeout, _pauses()
    while time.monotonic() < deadline:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return
        if all(proc_state(int(t)) in ("S", None, "Z", "X") for t in tasks):
            return
        await asyncio.sleep(next(pauses))


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (gunicorn's worker under its master, for instance)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``, found in ``/proc``.

    Managed Instances environments need this: their workers outlive the main process by the
    time they take to close, and an orphan's zombie may never be reaped by PID 1 here.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            found.append(int(name))
    return found


async def wait_group_gone(pgid: int, timeout: float) -> bool:
    """Poll until no live process is left in group ``pgid``: True, or False at ``timeout``."""
    deadline, pauses = time.monotonic() + timeout, _pauses()
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(max(next(pauses), 0.005))
    return True
