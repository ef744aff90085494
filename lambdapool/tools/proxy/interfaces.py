"""How the proxy's drivers see each other and the proxy: small Protocols instead of classes.

The pool lends backends to *borrowers* (clients, in ``client.py``) and a backend relays what
the server says to its *owner* (a client, or the server running a query of its own). Neither
needs more of the other than this, so neither module imports the other. The drivers and the
pool see the proxy (``ProxyServer``) only as a :class:`ClientContext`, :class:`BackendContext`
or :class:`PoolContext`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from lambdapool.tools.proxy.handshake import LoginContext

if TYPE_CHECKING:
    import asyncio
    import ssl

    from lambdapool.tools.proto import Frame
    from lambdapool.tools.proxy.backend import Backend
    from lambdapool.tools.proxy.client import Client
    from lambdapool.tools.proxy.config import ProxySettings
    from lambdapool.tools.proxy.pool import Pool


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


class BackendContext(Protocol):
    """What a backend driver needs of the proxy."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def pool(self) -> Pool | None:
        """None until the proxy's first backend is in."""

    @property
    def counters(self) -> dict[str, int]: ...


class ClientContext(LoginContext, Protocol):
    """What a client driver needs of the proxy: its login's needs, and these."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def pool(self) -> Pool: ...

    @property
    def latency(self) -> float:
        """Fault injection: hold bytes for a backend this long."""

    @property
    def hanging(self) -> bool:
        """Fault injection: accept, then read nothing (hang_on_connect)."""

    @property
    def ssl_context(self) -> ssl.SSLContext | None: ...

    def new_key(self) -> tuple[int, int]:
        """A fresh (process id, secret key) for a client's BackendKeyData."""

    def client_connected(self, client: Client) -> None: ...

    def client_gone(self, client: Client) -> None: ...

    def cancel(self, pid: int, secret: int) -> None:
        """A CancelRequest for the client with this key (ignored unless it holds a backend)."""


class PoolContext(Protocol):
    """What the pool needs of the proxy: the loop, settings and counters, and opening backends."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def settings(self) -> ProxySettings: ...

    @property
    def counters(self) -> dict[str, int]: ...

    async def connect_backend(self, *, refuse: bool = False) -> Backend:
        """A logged-in backend on a server of the proxy's role."""

    def server_unfit(self, backend: Backend) -> None:
        """``backend``'s server is no longer of the proxy's role: look for another."""

    def note_wait(self, seconds: float) -> None:
        """A borrower waited this long for a backend (for the stats)."""
