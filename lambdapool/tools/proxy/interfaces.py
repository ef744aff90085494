"""How the proxy's drivers see each other: small Protocols instead of each other's classes.

The pool lends backends to *borrowers* (clients, in ``client.py``) and a backend relays what
the server says to its *owner* (a client, or the server running a query of its own). Neither
needs more of the other than this, so neither module imports the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lambdapool.tools.proto import Frame
    from lambdapool.tools.proxy.backend import Backend


class Borrower(Protocol):
    """What the pool needs of a client waiting for a backend."""

    enqueued_at: float  # loop time it joined the queue (set by the pool)

    @property
    def closed(self) -> bool: ...

    def attach(self, backend: Backend) -> None:
        """The pool lends ``backend`` (the borrower's until it releases or resets it)."""

    def borrow_timed_out(self, *, busy: int, cap: int, waiting: int, why: str | None = None) -> None:
        """No backend came within the borrow timeout (``waiting``: others still queued; ``why``:
        the pool could not open one, and this is the last reason)."""

    def backend_unavailable(self, reason: str) -> None:
        """The pool could not open a backend for this borrower."""


class BackendOwner(Protocol):
    """Whom a backend relays the server's messages to while it is lent."""

    def backend_messages(self, msgs: list[Frame]) -> None: ...

    def backend_lost(self, *, by_proxy: bool, why: str | None = None) -> None:
        """The backend's connection ended (``by_proxy``: the proxy closed it, for reason ``why``)."""

    def pause_reading(self) -> None:
        """The backend's socket is full: stop reading what the owner sends."""

    def resume_reading(self) -> None: ...
