"""Driver glue, one module per driver; each imports its driver only when first used.

A driver object knows how to connect with :class:`ConnectParams`, check liveness without a
round trip, ping, end a block or an invocation the way the driver's own pool would, reset
session state, close, and classify connect errors (retry, auth, fatal): the contract is
``drivers.contract`` (Driver, AsyncDriver).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from lambdapool._drivers.base import ConnectParams, classify_connect_error
from lambdapool.errors import ConfigError

if TYPE_CHECKING:
    from lambdapool._drivers.contract import AnyDriver

# driver setting -> (glue module, class, the package it needs, the extra that installs it)
_MODULES = {
    "psycopg": ("lambdapool._drivers.psycopg_sync", "PsycopgDriver", "psycopg", "psycopg"),
    "psycopg-async": ("lambdapool._drivers.psycopg_async", "AsyncPsycopgDriver", "psycopg", "psycopg"),
    "asyncpg": ("lambdapool._drivers.asyncpg_async", "AsyncpgDriver", "asyncpg", "asyncpg"),
}


def load(name: str) -> AnyDriver:
    """The driver glue for setting ``driver=name``; a ConfigError naming the extra to install
    if the driver's package is not there (found, not imported: the cold start stays cheap)."""
    module_name, cls, package, extra = _MODULES[name]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"driver={name!r} needs the {package} package, which is not installed: pip install 'lambdapool[{extra}]'"
        )
    driver: AnyDriver = getattr(importlib.import_module(module_name), cls)()
    return driver


__all__ = ["ConnectParams", "classify_connect_error", "load"]
