"""The driver contract: what the warm path, the lender and the adapters may ask of a driver.

Each glue module (psycopg_sync, psycopg_async, asyncpg_async) implements one of these, and
mypy checks that it does; the core is typed against them, never against a driver's classes.
The connection itself stays opaque: the core only hands it back to the driver (and to the user).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from lambdapool._drivers.base import ConnectParams, Probes

# The driver's own connection object (psycopg.Connection, asyncpg.Connection...): the core
# never looks inside it, only passes it back to its driver.
Connection = Any

# How a clean block's open transaction was ended: psycopg_pool commits, asyncpg.Pool rolls back.
Ending = Literal["commit", "rollback"]


class _Common(Protocol):
    """The calls that are the same for both kinds: no round trip, so never awaited."""

    name: str

    def probes(self, conn: Connection) -> Probes:
        """(is_open, in_transaction), bound once per connection: run on every warm invocation."""

    def fileno(self, conn: Connection) -> int | None:
        """The connection's socket, watched while idle (None: it cannot be watched, so it is pinged)."""

    def is_closed(self, conn: Connection) -> bool: ...
    def usable(self, conn: Connection) -> bool:
        """Open and in a known transaction state (not broken mid-statement)."""

    def in_transaction(self, conn: Connection) -> bool: ...
    def read_only(self, conn: Connection) -> bool:
        """Did the server report itself read-only at login (no round trip)?"""

    def user_settings(self, conn: Connection) -> dict[str, Any]:
        """What the user set on the connection (autocommit, row_factory...), for its successor."""

    def terminate(self, conn: Connection) -> None:
        """Close without a round trip or an await (signal handlers, before a snapshot)."""

    def backend_pid(self, conn: Connection) -> int: ...


class Driver(_Common, Protocol):
    """A synchronous driver (psycopg)."""

    @property
    def is_async(self) -> Literal[False]: ...

    def connect(self, params: ConnectParams, timeout: float) -> Connection: ...
    def ping(self, conn: Connection) -> None:
        """A round trip outside any transaction; raises if the connection is dead."""

    def query_row(self, conn: Connection, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        """One row of an SDK query (%s placeholders), run starting no transaction."""

    def apply_user_settings(self, conn: Connection, settings: dict[str, Any]) -> None: ...
    def end_transaction(self, conn: Connection) -> Ending:
        """A clean outermost block left a transaction open: end it as the driver's pool would."""

    def rollback(self, conn: Connection) -> None: ...
    def reset(self, conn: Connection, configured: str = "") -> None:
        """Session state back to a new connection's; then ``configured`` (configure's SETs) again."""

    def close(self, conn: Connection) -> None: ...


class AsyncDriver(_Common, Protocol):
    """An asyncio driver (psycopg-async, asyncpg): the calls that may wait on the server are awaited."""

    @property
    def is_async(self) -> Literal[True]: ...

    async def connect(self, params: ConnectParams, timeout: float) -> Connection: ...
    async def ping(self, conn: Connection) -> None: ...
    async def query_row(self, conn: Connection, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]: ...
    async def apply_user_settings(self, conn: Connection, settings: dict[str, Any]) -> None: ...
    async def end_transaction(self, conn: Connection) -> Ending: ...
    async def rollback(self, conn: Connection) -> None: ...
    async def reset(self, conn: Connection, configured: str = "") -> None: ...
    async def close(self, conn: Connection) -> None: ...


AnyDriver = Driver | AsyncDriver
