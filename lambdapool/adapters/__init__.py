"""Poolers, one module each, chosen by ``pooler=`` name (shipped as ``lambdapool.adapters``).

Built in: ``direct``, ``rds-proxy``, ``pgbouncer``, ``local``, and for Google Cloud SQL
``cloud-sql`` and ``cloud-sql-pooler`` (its Managed Connection Pooling). A third party ships
its own by registering an :class:`~lambdapool.adapters.base.Adapter` subclass in the
entry-point group ``lambdapool.poolers``; built-in names are resolved without reading entry
points (that costs milliseconds on a cold start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lambdapool.errors import ConfigError

if TYPE_CHECKING:
    from .base import Adapter

BUILTIN = {
    "direct": "lambdapool.adapters.direct:DirectAdapter",
    "rds-proxy": "lambdapool.adapters.rds_proxy:RdsProxyAdapter",
    "pgbouncer": "lambdapool.adapters.pgbouncer:PgBouncerAdapter",
    "local": "lambdapool.adapters.local:LocalProxyAdapter",
    "cloud-sql": "lambdapool.adapters.cloud_sql:CloudSqlAdapter",
    "cloud-sql-pooler": "lambdapool.adapters.cloud_sql:CloudSqlPoolerAdapter",
}
ENTRY_POINT_GROUP = "lambdapool.poolers"


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def available() -> list[str]:
    from importlib.metadata import entry_points

    names = set(BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def load(name: str) -> type[Adapter]:
    """The adapter class registered under ``name``, or ConfigError listing the known names."""
    if name in BUILTIN:
        try:
            builtin: type[Adapter] = _import(BUILTIN[name])
            return builtin
        except ModuleNotFoundError as exc:
            if not exc.name or not exc.name.startswith("lambdapool.adapters"):
                raise
            raise ConfigError(f"pooler {name!r} is not available in this version of lambdapool") from None
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            plugin: type[Adapter] = ep.load()
            return plugin
    raise ConfigError(
        f"pooler must be one of {', '.join(available())} (or a name registered in the "
        f"'{ENTRY_POINT_GROUP}' entry-point group); got {name!r}"
    )
