"""cloud-sql and cloud-sql-pooler: Google Cloud SQL for PostgreSQL, with IAM database login.

Endpoint: the DSN's. On Cloud Run functions, the built-in Cloud SQL connection's socket
(``postgresql://USER@/DB?host=/cloudsql/PROJECT:REGION:INSTANCE``, or ``host=/cloudsql/...``
in a key=value DSN), or a private IP (a VPC connector or direct VPC egress).
Auth: ``iam_auth=true`` is Cloud SQL's manual IAM database authentication
(:class:`~lambdapool.credentials.CloudSqlIamToken`): the password is an access token of the
function's service account, from the metadata server over plain HTTP (no google library, no
AWS), cached until 5 minutes before it expires and fetched again once if a login is rejected;
the user is the account's email less ``.gserviceaccount.com`` unless the DSN or ``user`` names
one. Off Google Cloud, application default credentials (``lambdapool[gcp]``). Or a password.
``secret_arn`` is refused: it names an AWS Secrets Manager secret, and these poolers call no AWS
API (a Secret Manager secret reaches a function as an environment variable: pass it as
``password``).
TLS: IAM logins over TCP use TLS: ``sslmode=require`` unless the DSN asks for more (verify-ca /
verify-full with ``sslrootcert``, the instance's server CA); ``disable``, ``allow`` and
``prefer`` are refused. The ``/cloudsql/`` socket is Cloud Run's connector, already encrypted
to the instance: nothing is asked of it.

``cloud-sql-pooler``: Cloud SQL Managed Connection Pooling (Enterprise Plus), PgBouncer-based,
in transaction mode. It takes the ``pgbouncer`` pooler's driver defaults (no named prepared
statements unless ``pgbouncer_prepared_statements`` says the pool tracks them), and port 6432,
where the pooler listens, when the DSN names no port (over TCP; a socket's port is its file's).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, ClassVar

from lambdapool._config import Setting
from lambdapool._drivers.base import ConnectParams
from lambdapool.adapters.base import CREDENTIAL_OPTIONS, Adapter
from lambdapool.adapters.pgbouncer import PgBouncerAdapter
from lambdapool.errors import ConfigError

WEAK_SSLMODES = ("disable", "allow", "prefer")

_IAM = Setting(
    "iam_auth",
    bool,
    False,
    "Cloud SQL IAM database login: the service account's access token from the metadata server, "
    "reused until 5 min before it expires",
)


# AWS-only settings are unknown here (a clear "unknown setting" error names the allowed ones);
# secret_arn stays, to say why it is refused and what to do instead.
_AWS_ONLY = frozenset({"secret_ttl", "region", "aws_endpoint_url"})


class CloudSqlAdapter(Adapter):
    name = "cloud-sql"
    OPTIONS: ClassVar[tuple[Setting, ...]] = tuple(
        _IAM if o.name == "iam_auth" else o for o in CREDENTIAL_OPTIONS if o.name not in _AWS_ONLY
    )
    default_port: ClassVar[int | None] = None  # a port the DSN may leave out (TCP only)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sslmode = self._tls()

    # -- settings --------------------------------------------------------------------------
    def _calls_aws(self) -> bool:
        return False  # (no region, no boto: iam_auth is Google's here)

    def _credentials(self) -> Any:
        if self.options["secret_arn"]:
            raise ConfigError(
                f"secret_arn names an AWS Secrets Manager secret; pooler {self.name!r} calls no AWS API. "
                "Use iam_auth=true (Cloud SQL IAM database login), or a password: a Secret Manager secret "
                "exposed to the function as an environment variable, passed as password= (or LAMBDAPOOL_PASSWORD)"
            )
        return super()._credentials()

    def _over_tcp(self) -> bool:
        parts = self.settings.parts
        hosts = [h for h, _ in parts.addresses] or [parts.host or os.environ.get("PGHOST")]
        return any(h and not h.startswith("/") for h in hosts)

    def _tls(self) -> str | None:
        given = self.settings.parts.params.get("sslmode")
        if not (self.options["iam_auth"] and self._over_tcp()):
            return given  # a password login, or the /cloudsql socket: as the DSN says
        if not given:
            return "require"
        if given in WEAK_SSLMODES:
            raise ConfigError(
                f"dsn sslmode={given!r}: Cloud SQL IAM logins over TCP send an access token as the password, "
                "so they use TLS: leave sslmode out (require) or use require, verify-ca or verify-full "
                "(sslrootcert= the instance's server CA)"
            )
        return given

    def _port(self, host: str | None, port: int | None) -> int | None:
        if port is None and self.default_port and host and not host.startswith("/"):
            return self.default_port
        return port

    # -- connect ---------------------------------------------------------------------------
    def base_params(self) -> ConnectParams:
        params = super().base_params()
        return replace(
            params,
            port=self._port(params.host, params.port),
            addresses=tuple((h, self._port(h, p)) for h, p in params.addresses),
            sslmode=self._sslmode,
        )

    def endpoint(self) -> tuple[str | None, int | None]:
        host, port = super().endpoint()
        return host, self._port(host, port)

    def _credentials_for(self, host: str | None, port: int | None) -> Any:
        if self.options["iam_auth"] and self.credentials is None:
            from lambdapool.credentials import CloudSqlIamToken

            # A token is not bound to an endpoint: one provider, the user the DSN names, if any.
            self.credentials = CloudSqlIamToken(self.base_params().user)
        return self.credentials

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            auth="iam" if self.options["iam_auth"] else "password",
            tls=self._sslmode or ("unix socket" if not self._over_tcp() else "driver default"),
            credential_fetches=getattr(self.credentials, "fetches", 0),
        )
        return out


class CloudSqlPoolerAdapter(CloudSqlAdapter):
    name = "cloud-sql-pooler"
    OPTIONS = (
        *CloudSqlAdapter.OPTIONS,
        *(o for o in PgBouncerAdapter.OPTIONS if o.name == "pgbouncer_prepared_statements"),
    )
    default_port = 6432  # where Managed Connection Pooling listens

    # PgBouncer in transaction mode: the pgbouncer pooler's prepared-statement defaults.
    driver_options = PgBouncerAdapter.driver_options

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["prepared_statements"] = self.options["pgbouncer_prepared_statements"]
        return out
