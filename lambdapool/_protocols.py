"""The shapes of ``db.connection()`` for type checkers: a block yielding the driver's connection."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, TypeVar

ConnT_co = TypeVar("ConnT_co", covariant=True)


class SyncBlock(Protocol[ConnT_co]):
    """``with db.connection() as conn`` (psycopg)."""

    def __enter__(self) -> ConnT_co: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class AsyncBlock(Protocol[ConnT_co]):
    """``async with db.connection() as conn`` (psycopg-async, asyncpg)."""

    async def __aenter__(self) -> ConnT_co: ...
    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
