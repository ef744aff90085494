"""Process-level hooks: SIGTERM, interpreter exit, SnapStart snapshot and restore.

* SIGTERM (Lambda with an extension registered, Cloud Run / Cloud Functions on scale-in):
  close our connections, then do what was going to happen anyway - call the handler that was
  installed before us, or re-deliver the signal under the default action.
* SnapStart: nothing connected may be carried into a snapshot (the restored copies would share
  one server session); after a restore the next invocation counts as cold and connects lazily.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lambdapool._database import Core

logger = logging.getLogger("lambdapool")

_databases: weakref.WeakSet[Core] = weakref.WeakSet()  # (each Database's internals)
_previous_sigterm: Any = None
_installed = False
_lock = threading.Lock()


def register(core: Core, *, handle_sigterm: bool, snap_start: bool) -> None:
    global _installed
    with _lock:
        _databases.add(core)
        if _installed:
            return
        _installed = True
    atexit.register(_close_all, "exit")
    if handle_sigterm:
        _install_sigterm()
    if snap_start:
        _register_snapstart()


def _close_all(reason: str) -> None:
    for core in list(_databases):
        try:
            core.shutdown(reason)
        except Exception:  # shutting down: never let cleanup mask the real exit
            logger.debug("lambdapool: shutdown of %r failed", core.settings.driver, exc_info=True)


def _install_sigterm() -> None:
    global _previous_sigterm
    if threading.current_thread() is not threading.main_thread():
        logger.debug("lambdapool: not in the main thread; SIGTERM handler not installed")
        return
    _previous_sigterm = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: Any) -> None:
    _close_all("sigterm")
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    # SIG_IGN (or unknown, set from C): ignore, as before us


def _register_snapstart() -> None:
    try:
        from snapshot_restore_py import register_after_restore, register_before_snapshot
    except ImportError:
        logger.debug("lambdapool: snapshot_restore_py not available; SnapStart hooks not registered")
        return
    register_before_snapshot(before_snapshot)
    register_after_restore(after_restore)


def before_snapshot() -> None:
    _close_all("snapshot")


def after_restore() -> None:
    for core in list(_databases):
        core.restored()


def hooks() -> dict[str, Callable[[], None]]:
    """The SnapStart hooks, for runtimes that take them another way."""
    return {"before_snapshot": before_snapshot, "after_restore": after_restore}
