"""A ``with`` where ``async with`` was meant (or the reverse) gets an error that says so.

Without these, Python's own message ("'AsyncLender' object does not support the context
manager protocol") names our internals and not the fix.
"""

from __future__ import annotations

from typing import Any

from lambdapool.errors import ConfigError


def _driver(block: Any) -> Any:
    return getattr(block, "driver", None) or block.lender.driver  # (the lender, or an ad hoc block)


class AsyncBlockOnly:
    """Mixed into the async drivers' ``connection()`` blocks."""

    def __enter__(self) -> Any:
        raise ConfigError(
            f"driver {_driver(self).name!r} is asynchronous: use 'async with db.connection()' inside an "
            "async def (or driver='psycopg' for plain def code)"
        )

    def __exit__(self, *exc: object) -> None:
        return None


class SyncBlockOnly:
    """Mixed into the sync driver's ``connection()`` blocks."""

    async def __aenter__(self) -> Any:
        raise ConfigError(
            f"driver {_driver(self).name!r} is synchronous: use 'with db.connection()' (it blocks the "
            "event loop while it waits), or driver='psycopg-async' or 'asyncpg' for async code"
        )

    async def __aexit__(self, *exc: object) -> None:
        return None
