"""A driver's connect error, kept without the secrets it carries.

A failed connect's exception holds the password or IAM token: psycopg's in ``pgconn`` (its
conninfo options) and in its traceback's frame locals (``conninfo``, ``kwargs``), asyncpg's in
its frames' ``ConnectionParameters``. Error reporters render both (Sentry captures locals by
default). So lambdapool's own error is chained to a :class:`DriverError` instead: the driver's
class name, SQLSTATE and message (known secrets blotted out), no connection, no traceback.
"""

from __future__ import annotations

from lambdapool.errors import LambdapoolError


class DriverError(Exception):
    """What the driver said when a connect failed, and nothing else it held."""

    def __init__(self, driver_class: str, sqlstate: str | None, message: str) -> None:
        super().__init__(driver_class, sqlstate, message)  # (args as given: it pickles)
        self.driver_class = driver_class  # e.g. psycopg.OperationalError, asyncpg.exceptions.InvalidPasswordError
        self.sqlstate = sqlstate
        self.message = message

    def __str__(self) -> str:
        code = f" [SQLSTATE {self.sqlstate}]" if self.sqlstate else ""
        return f"{self.driver_class}{code}: {self.message}"


def driver_error(exc: BaseException, secrets: tuple[str | None, ...]) -> DriverError:
    """``exc`` as a :class:`DriverError`: raise lambdapool's error ``from`` this, then
    :func:`detach` it (a raise inside ``except`` also records ``exc`` as the context)."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    sqlstate = getattr(exc, "sqlstate", None)
    return DriverError(name, sqlstate if isinstance(sqlstate, str) else None, message_of(exc, secrets))


def message_of(exc: BaseException, secrets: tuple[str | None, ...]) -> str:
    """``exc``'s message on one line, with any secret we know of blotted out."""
    text = " ".join(str(exc).split()) or "(no message)"
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def detach(error: BaseException) -> None:
    """Drop the implicit context of a lambdapool error chained to a DriverError: the context is
    the driver's original exception, with all it holds."""
    if isinstance(error, LambdapoolError) and isinstance(error.__cause__, DriverError):
        error.__context__ = None
        error.__suppress_context__ = True
