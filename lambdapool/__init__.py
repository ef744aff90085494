"""lambdapool: one warm Postgres connection per function instance, routed through a pooler.

``import lambdapool`` is on every cold start: it imports no driver, no boto3, nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lambdapool.errors import AuthError, ConfigError, ConnectionUnavailable, LambdapoolError

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "ConfigError",
    "ConnectionUnavailable",
    "Database",
    "LambdapoolError",
    "__version__",
]

if TYPE_CHECKING:
    from lambdapool._database import Database
else:

    def __getattr__(name: str) -> object:  # PEP 562: Database (and what it pulls in) loads on first use
        if name == "Database":
            from lambdapool._database import Database

            return Database
        raise AttributeError(f"module 'lambdapool' has no attribute {name!r}")
