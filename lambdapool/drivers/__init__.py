"""Driver glue, one module per driver; each imports its driver only when first used.

A driver object knows how to connect with :class:`ConnectParams`, check liveness without a
round trip, ping, end a block or an invocation the way the driver's own pool would, reset
session state, close, and classify connect errors (retry, auth, fatal).
"""

from __future__ import annotations

import importlib
from typing import Any

from lambdapool.drivers.base import ConnectParams, classify_connect_error

_MODULES = {
    "psycopg": ("lambdapool.drivers.psycopg_sync", "PsycopgDriver"),
    "psycopg-async": ("lambdapool.drivers.psycopg_async", "AsyncPsycopgDriver"),
    "asyncpg": ("lambdapool.drivers.asyncpg_async", "AsyncpgDriver"),
}


def load(name: str) -> Any:
    module_name, cls = _MODULES[name]
    return getattr(importlib.import_module(module_name), cls)()


__all__ = ["ConnectParams", "classify_connect_error", "load"]
