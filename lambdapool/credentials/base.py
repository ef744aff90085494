"""What a credential provider yields (:class:`Secret`) and the cache every provider shares.

Theory of operation
-------------------
A provider hands out a :class:`Secret` from its cache and fetches a new one only when the
cache is empty or stale. ``get()`` (sync code) and ``aget()`` (async code) share that cache;
they differ only in how a fetch is made, so a subclass writes one ``_fetch`` and one
``_afetch`` and nothing else. ``invalidate()`` empties the cache: the caller does it after the
server rejected the credentials (a rotated secret, an expired token), and the next ``get()``
fetches anew. Staleness is decided lazily, at ``get()`` time, against the provider's clock:
no timers, which would not run while a function instance is frozen.

Concurrent callers at an empty cache fetch once: sync callers (Cloud Functions serves requests
on threads) under a lock, with the cache checked again inside it; async callers (tasks on one
event loop) by awaiting the same fetch task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Clock = Callable[[], float]

logger = logging.getLogger("lambdapool.credentials")


@dataclass(frozen=True)
class Secret:
    """Credentials for one login; ``repr()``/``str()`` never show the password."""

    password: str = field(repr=False)
    username: str | None = None
    host: str | None = None
    port: int | None = None
    dbname: str | None = None


@runtime_checkable
class CredentialProvider(Protocol):
    """What an adapter needs from a source of credentials."""

    can_refresh: bool
    fetches: int

    def get(self) -> Secret: ...

    async def aget(self) -> Secret: ...

    def invalidate(self) -> None: ...


class CachedProvider:
    """A provider that caches what it fetched until ``_fetch`` says it expires, or invalidate()."""

    can_refresh = True

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._secret: Secret | None = None
        self._expires = 0.0
        self._lock = threading.Lock()
        self._pending: Any = None  # the asyncio.Task of the async fetch under way
        self.fetches = 0

    def get(self) -> Secret:
        """The cached secret, or a freshly fetched one (sync code)."""
        secret = self._cached()
        if secret is None:
            with self._lock:
                secret = self._cached()
                if secret is None:
                    started = self._clock()
                    secret = self._store(started, *self._fetch())
        return secret

    async def aget(self) -> Secret:
        """The cached secret, or a freshly fetched one (async code); same cache as :meth:`get`.
        Written by hand, not generated: threads wait on a lock, tasks await one shared fetch."""
        secret = self._cached()
        if secret is not None:
            return secret
        import asyncio  # only async code gets here, and it has asyncio loaded already

        pending = self._pending
        if pending is None or pending.done() or pending.get_loop() is not asyncio.get_running_loop():
            pending = self._pending = asyncio.ensure_future(self._afetch_and_store())
        # Concurrent callers share one fetch; shielded so that one caller's cancellation does
        # not cancel the fetch the others are waiting for.
        return await asyncio.shield(pending)

    def invalidate(self) -> None:
        """Drop the cached secret: the next get()/aget() fetches anew."""
        self._secret = None
        self._pending = None  # a fetch begun before the rejection may bring the rejected value

    def _cached(self) -> Secret | None:
        secret = self._secret
        if secret is not None and self._clock() < self._expires:
            return secret
        return None

    def _store(self, started: float, secret: Secret, lifetime: float) -> Secret:
        # Lifetime counts from before the fetch began: never trust a secret longer than it lives.
        self._secret, self._expires = secret, started + lifetime
        self.fetches += 1
        logger.debug("%r: fetched (fetch %d), cached for %.0f s", self, self.fetches, lifetime)
        return secret

    async def _afetch_and_store(self) -> Secret:
        started = self._clock()
        return self._store(started, *await self._afetch())

    def _fetch(self) -> tuple[Secret, float]:
        """Fetch with sync code: the secret and how many seconds to cache it."""
        raise NotImplementedError

    async def _afetch(self) -> tuple[Secret, float]:
        """Fetch with async code: the secret and how many seconds to cache it."""
        raise NotImplementedError
