"""``ENGINE: "lambdapool.django"``: Django's PostgreSQL backend (psycopg 3) on lambdapool's warm
connection.

Each Django connect lends the instance's warm connection (after lambdapool's liveness check);
Django's close (``close_old_connections`` at the end of every request, ``connection.close()``)
gives it back warm instead of closing it. Settings come from ``OPTIONS["lambdapool"]`` (a dict
of ``lambdapool.Database`` settings) over the ``LAMBDAPOOL_*`` environment; the endpoint from
NAME / USER / PASSWORD / HOST / PORT. See ``lambdapool.django.base``.
"""

from __future__ import annotations

from typing import Any


def database(alias: str = "default") -> Any:
    """The ``lambdapool.Database`` behind Django's connection ``alias`` (made on first use):
    for ``db.stats()``, or to wrap a handler (``db.lambda_handler``) so that invocations are
    numbered and reported."""
    from django.db import connections

    return connections[alias].lambdapool_database()


__all__ = ["database"]
