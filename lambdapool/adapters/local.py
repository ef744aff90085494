"""local: the bundled local proxy (``lambdapool proxy`` / ``lambdapool.testing.LocalProxy``).

It behaves like RDS Proxy (a cap on backends, borrow timeout, SCRAM or IAM-style tokens, TLS,
pinning rules), so this adapter is the rds-proxy adapter pointed at the DSN's host: the same
code path, end to end, on a laptop or in CI. TLS is optional here (``sslmode`` as the DSN
says, ``prefer`` by default).
"""

from __future__ import annotations

from typing import Any

from lambdapool._config import Setting
from lambdapool.adapters.rds_proxy import RdsProxyAdapter


class LocalProxyAdapter(RdsProxyAdapter):
    name = "local"
    OPTIONS = tuple(
        Setting(o.name, o.kind, "prefer", "prefer (TLS if offered), require or stricter") if o.name == "sslmode" else o
        for o in RdsProxyAdapter.OPTIONS
    )

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["pooler"] = self.name
        return out
