"""Credentials the user supplies: a fixed password, or a callable that produces one."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

from lambdapool.credentials.base import CachedProvider, Secret
from lambdapool.errors import ConfigError

PasswordFn = Callable[[], str | Secret | Awaitable[str | Secret]]

_FOREVER = float("inf")


class StaticPassword:
    """A password that never changes: refreshing it after a rejection would be pointless."""

    can_refresh = False
    fetches = 0

    def __init__(self, password: str) -> None:
        self._secret = Secret(password=_checked(password, "password"))

    def get(self) -> Secret:
        return self._secret

    async def aget(self) -> Secret:
        return self._secret

    def invalidate(self) -> None:
        """Nothing to refresh: the same password would be rejected again."""

    def __repr__(self) -> str:
        return "StaticPassword(password=***)"


class PasswordCallable(CachedProvider):
    """Calls ``fn()`` (or awaits ``async fn()``) when nothing is cached; caches until invalidate().

    ``fn`` returns the password (or a token: an IAM token callable of the user's own works the
    same way), or a :class:`Secret` when it also knows the user, host or database. Being called
    again only after a rejection is what makes a rotating password work without polling.
    """

    def __init__(self, fn: PasswordFn) -> None:
        if not callable(fn):
            raise ConfigError(f"password: expected a string or a callable returning one, got {type(fn).__name__}")
        super().__init__(time.monotonic)
        self._fn = fn
        call = getattr(fn, "__call__", None)  # noqa: B004  (the method itself: an instance's async __call__)
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)

    def _fetch(self) -> tuple[Secret, float]:
        if self._is_async:
            raise ConfigError(
                f"password: {self._name} is an async callable, which sync code cannot await; "
                "use an async driver (psycopg-async, asyncpg) or pass a plain function"
            )
        return _as_secret(self._fn(), self._name), _FOREVER

    async def _afetch(self) -> tuple[Secret, float]:
        value = self._fn()
        if inspect.isawaitable(value):
            value = await value
        return _as_secret(value, self._name), _FOREVER

    @property
    def _name(self) -> str:
        return getattr(self._fn, "__qualname__", type(self._fn).__name__)

    def __repr__(self) -> str:
        return f"PasswordCallable({self._name})"


def _as_secret(value: object, name: str) -> Secret:
    if isinstance(value, Secret):
        _checked(value.password, f"{name}().password")
        return value
    return Secret(password=_checked(value, f"{name}()"))


def _checked(password: object, what: str) -> str:
    """The password, if it is a non-empty string; the message never includes the value."""
    if not isinstance(password, str):
        raise ConfigError(f"password: {what} must be a str, got {type(password).__name__}")
    if not password:
        raise ConfigError(f"password: {what} is empty; give the role's password or a token provider")
    return password
