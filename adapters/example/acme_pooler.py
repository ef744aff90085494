"""acme_pooler: a third-party pooler adapter for lambdapool, the smallest useful one.

Installed (``pip install ./adapters/example``), it is chosen with ``pooler="acme"`` (or
``LAMBDAPOOL_POOLER=acme``): lambdapool finds it through the ``lambdapool.poolers`` entry point in
this directory's pyproject.toml. It accepts one setting of its own (``acme_statement_cache``,
also read from ``LAMBDAPOOL_ACME_STATEMENT_CACHE``) and, like the ``pgbouncer`` adapter, turns
prepared statements off for a pooler in transaction mode unless told otherwise.
"""

from __future__ import annotations

from typing import Any

from lambdapool.adapters.base import Adapter, Setting


class AcmeAdapter(Adapter):
    name = "acme"
    OPTIONS = (
        *Adapter.OPTIONS,  # the credential settings every pooler accepts (iam_auth, secret_arn, ...)
        Setting("acme_statement_cache", bool, False, "true if the Acme pooler keeps prepared statements"),
    )

    def driver_options(self) -> dict[str, Any]:
        if self.options["acme_statement_cache"]:
            return {}
        if self.settings.driver == "asyncpg":
            return {"statement_cache_size": 0}
        return {"prepare_threshold": None}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "statement_cache": self.options["acme_statement_cache"]}
