"""rds-proxy: connect through Amazon RDS Proxy without pinning its sessions.

Endpoint: the DSN's host (what the infra/ templates give: the proxy's hostname, so a cold
start makes no AWS call, needs no rds:DescribeDBProxies and no NAT gateway or RDS VPC endpoint),
or ``proxy_name``: looked up once per instance with describe_db_proxies (one lookup even when
threads start at once; throttling retried inside the connect's budget; a port in the DSN, if
any, overrides the proxy's 5432: tunnels, tests). With both, ``proxy_name`` wins.
Auth: IAM tokens (``iam_auth=true``: generate_db_auth_token, signed locally, cached well
inside their 15 minutes), a Secrets Manager secret (``secret_arn``: cached, fetched again once
when the proxy rejects it, which is how a rotation shows itself), or a password.
TLS: required (``sslmode=require``); ``ssl_ca_file`` turns on verify-full.

Pinning (RDS Proxy for PostgreSQL): SQL-level SET/RESET/DISCARD/PREPARE/DEALLOCATE, temp
tables, LISTEN, session advisory locks and statements over 16 KB pin a client to its backend,
which defeats multiplexing. Protocol-level prepared statements are multiplexed (since 2023).
So nothing the SDK sends pins: its liveness ping is an empty query or ``SELECT 1``, psycopg's
prepared statements are turned off (so it never sends ``DEALLOCATE ALL``, psycopg/psycopg#1105),
and the only pinning statement we could send, ``reset_session``, is warned about once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import replace
from typing import Any

from lambdapool._config import Setting
from lambdapool._drivers.base import ConnectParams
from lambdapool._retry import CONNECT_DEADLINE
from lambdapool.adapters.base import Adapter
from lambdapool.errors import ConfigError

logger = logging.getLogger("lambdapool")

AMAZON_ROOTS = (
    "RDS Proxy presents certificates from AWS Certificate Manager: verify them with the Amazon "
    "Trust Services root CAs (AmazonRootCA1-4, https://www.amazontrust.com/repository/), not the "
    "RDS instance CA bundle"
)
PIN_WARNING = (
    "reset_session=True behind RDS Proxy sends RESET ALL / UNLISTEN / DISCARD after every "
    "invocation: each one pins the session to its backend for the rest of its life, so every "
    "warm instance holds a database connection of its own and the proxy cannot multiplex. "
    "Leave reset_session off behind RDS Proxy unless you must."
)
_warned_reset = False


class RdsProxyAdapter(Adapter):
    name = "rds-proxy"
    OPTIONS = (
        *Adapter.OPTIONS,
        Setting("proxy_name", str, None, "look the endpoint up by name (describe_db_proxies)"),
        Setting("ssl_ca_file", str, None, "CA bundle: verify-full against the proxy's certificate"),
        Setting("sslmode", str, "require", "require (TLS) or stricter; RDS Proxy can enforce TLS"),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._endpoint: tuple[str, int] | None = None
        self._lookup_lock = threading.Lock()  # threads at a cold start: one describe_db_proxies
        super().__init__(*args, **kwargs)
        opts = self.options
        if not opts["proxy_name"] and not self.settings.parts.host:
            raise ConfigError(f"pooler {self.name!r} needs proxy_name (LAMBDAPOOL_PROXY_NAME) or a host in the dsn")
        ca = opts["ssl_ca_file"]
        if ca and not os.path.isfile(ca):
            raise ConfigError(f"ssl_ca_file {ca!r} not found. {AMAZON_ROOTS}")
        if self.name == "rds-proxy" and self._sslmode() in ("disable", "allow", "prefer"):
            raise ConfigError(
                f"sslmode={self._sslmode()!r}: RDS Proxy connections must use TLS; use require, "
                "verify-ca or verify-full"
            )
        if self.settings.reset_session:
            _warn_reset_once()

    def names_an_endpoint(self) -> bool:
        return bool(self.options["proxy_name"]) or super().names_an_endpoint()

    def _sslmode(self) -> str:
        if self.options["ssl_ca_file"]:
            return "verify-full"
        return self.settings.parts.params.get("sslmode") or self.options["sslmode"]

    # -- endpoint --------------------------------------------------------------------------
    def endpoint(self) -> tuple[str | None, int | None]:
        if not self.options["proxy_name"]:
            return super().endpoint()
        if self._endpoint is None:
            from lambdapool.credentials import resolve_proxy_endpoint

            with self._lookup_lock:
                if self._endpoint is None:
                    host, port = resolve_proxy_endpoint(
                        self.options["proxy_name"],
                        self.options["region"],
                        endpoint_url=self.options["aws_endpoint_url"],
                        deadline=self._lookup_deadline(),
                    )
                    self._endpoint = (host, self.settings.parts.port or port)
        return self._endpoint

    async def aendpoint(self) -> tuple[str | None, int | None]:
        if not self.options["proxy_name"]:
            return super().endpoint()
        if self._endpoint is None:
            from lambdapool.credentials import aresolve_proxy_endpoint

            host, port = await aresolve_proxy_endpoint(
                self.options["proxy_name"],
                self.options["region"],
                endpoint_url=self.options["aws_endpoint_url"],
                deadline=self._lookup_deadline(),
            )
            self._endpoint = (host, self.settings.parts.port or port)
        return self._endpoint

    def _lookup_deadline(self) -> float:
        # The lookup runs inside a connect: it stops at that connect's deadline (the
        # invocation's, less the margin), else acquire_timeout from now.
        deadline = CONNECT_DEADLINE.get()
        return deadline if deadline is not None else time.monotonic() + self.settings.acquire_timeout

    def params_for(self, host: str | None, port: int | None) -> ConnectParams:
        params = super().params_for(host, port)
        return replace(params, sslmode=self._sslmode(), sslrootcert=self.options["ssl_ca_file"] or params.sslrootcert)

    def driver_options(self) -> dict[str, Any]:
        # psycopg: no prepared statements, so never DEALLOCATE ALL (which pins). asyncpg's
        # protocol-level statements are multiplexed by the proxy and stay on.
        return {"prepare_threshold": None} if self.settings.driver.startswith("psycopg") else {}

    def describe(self) -> dict[str, Any]:
        opts = self.options
        auth = "iam" if opts["iam_auth"] else "secrets-manager" if opts["secret_arn"] else "password"
        host, port = self._endpoint or (self.settings.parts.host, self.settings.parts.port)
        return {
            "pooler": self.name,
            "proxy_name": opts["proxy_name"],
            "endpoint": f"{host}:{port or 5432}" if host else "(not looked up yet)",
            "auth": auth,
            "tls": self._sslmode(),
            "credential_fetches": getattr(self.credentials, "fetches", 0),
        }


def _warn_reset_once() -> None:
    global _warned_reset
    if not _warned_reset:
        _warned_reset = True
        logger.warning("lambdapool: %s", PIN_WARNING)
