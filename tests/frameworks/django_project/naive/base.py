"""The "simple custom backend" of the issue: Django's backend with get_new_connection returning
``db.connection().__enter__()``. Its connection lacks Django's cursor factory and adapters."""

import os
from typing import Any

from django.db.backends.postgresql import base

import lambdapool

_db: Any = None


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        global _db
        if _db is None:
            _db = lambdapool.Database(os.environ["DJ_DSN"], password=os.environ["DJ_PASSWORD"])
        return _db.connection().__enter__()
