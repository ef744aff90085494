"""The adapter interface: settings in, connect parameters and driver options out.

An adapter is built once per :class:`lambdapool.Database`. It declares the extra settings it
accepts in ``OPTIONS`` (validated like the core ones, also read from ``LAMBDAPOOL_<NAME>``),
yields :class:`~lambdapool._drivers.ConnectParams` for each connect (credentials resolved,
sync or async), and may veto keeping a connection warm (the direct adapter's budget guard).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from lambdapool._config import Setting, Settings, coerce, env_name
from lambdapool._drivers.base import ConnectParams
from lambdapool._drivers.params import wants_writer
from lambdapool.errors import ConfigError

if TYPE_CHECKING:
    from lambdapool._drivers.contract import AsyncDriver, Connection, Driver

# Credentials, usable with every pooler: a password (DSN or ``password``), an IAM token, or a
# Secrets Manager secret.
CREDENTIAL_OPTIONS: tuple[Setting, ...] = (
    Setting("iam_auth", bool, False, "authenticate with IAM tokens (rds-db:connect), cached 15 min"),
    Setting("secret_arn", str, None, "Secrets Manager secret (RDS JSON shape) holding the password"),
    Setting("secret_ttl", float, 300.0, "seconds to cache the secret; a rejected login re-fetches it once"),
    Setting("region", str, None, "AWS region for IAM and Secrets Manager; default AWS_REGION"),
    Setting("aws_endpoint_url", str, None, "AWS API endpoint (a VPC endpoint; moto in tests)"),
    Setting("user", str, None, "database user when the DSN has none"),
    Setting("dbname", str, None, "database name when the DSN has none"),
    Setting(
        "reader",
        bool,
        False,
        "the endpoint is a reader (an RDS Proxy read-only endpoint, lambdapool proxy --reader): its "
        "read-only servers are kept; default: a writer is wanted unless the dsn's target_session_attrs says otherwise",
    ),
)


# DSN parameters that ConnectParams carries as fields of their own
_OWN_PARAMS = frozenset({"sslmode", "sslrootcert", "application_name"})


class Adapter:
    """Base class: connects where the DSN says, with a password, an IAM token or a secret."""

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[tuple[Setting, ...]] = CREDENTIAL_OPTIONS

    def __init__(self, settings: Settings, *, application_name: str) -> None:
        self.settings = settings
        self.application_name = application_name
        self.options = self._validate(settings.pooler_options)
        opts = self.options
        if opts["iam_auth"] and opts["secret_arn"]:
            raise ConfigError("iam_auth and secret_arn: choose one way to authenticate")
        if self._calls_aws():
            from lambdapool import _aws as aws

            aws.resolve_region(opts["region"])  # no region: fail at init, not at the first connect
        self.credentials = self._credentials()
        # A connection on a read-only server is dropped unless a reader will do (see
        # drivers.params.wants_writer; Aurora's reader endpoint is named cluster-ro-...).
        self.wants_writer = (
            wants_writer(settings.parts.params)
            and not opts["reader"]
            and ".cluster-ro-" not in (settings.parts.host or "")
        )

    # -- settings --------------------------------------------------------------------------
    def _validate(self, given: dict[str, Any]) -> dict[str, Any]:
        known = {o.name: o for o in self.OPTIONS}
        unknown = sorted(set(given) - set(known))
        if unknown:
            from lambdapool._config import setting_names

            allowed = sorted(setting_names()) + sorted(known)
            raise ConfigError(
                f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for pooler "
                f"{self.name!r}; allowed: {', '.join(allowed)}"
            )
        out = {}
        for opt in self.OPTIONS:
            value = given.get(opt.name, opt.default)
            if callable(value) and opt.kind is str:
                out[opt.name] = value  # password/token providers may be callables
            else:
                source = env_name(opt.name) if isinstance(value, str) and opt.kind is not str else ""
                out[opt.name] = coerce(opt.name, value, opt.kind, source=source)
        return out

    def _calls_aws(self) -> bool:
        """Do these settings need AWS (an RDS IAM token, Secrets Manager, a proxy lookup)? Then a
        region must be known at init. An adapter for another cloud says no, and makes its own
        ``iam_auth`` credentials in ``_credentials_for``."""
        opts = self.options
        return bool(opts["iam_auth"] or opts["secret_arn"] or opts.get("proxy_name"))

    def _credentials(self) -> Any:
        """A credentials provider (lambdapool.credentials), or None. IAM tokens are made once
        the endpoint is known (:meth:`_credentials_for`): a token is signed for host and port."""
        opts = self.options
        if opts["secret_arn"]:
            from lambdapool.credentials import SecretsManagerSecret

            return SecretsManagerSecret(
                opts["secret_arn"], opts["region"], ttl=opts["secret_ttl"], endpoint_url=opts["aws_endpoint_url"]
            )
        if opts["iam_auth"]:
            return None
        password = self.settings.password
        if password is None:
            password = self.settings.parts.password
        if password is None:
            return None
        from lambdapool.credentials import PasswordCallable, StaticPassword

        return PasswordCallable(password) if callable(password) else StaticPassword(password)

    # -- connect ---------------------------------------------------------------------------
    def base_params(self) -> ConnectParams:
        parts = self.settings.parts
        return ConnectParams(
            host=parts.host,
            port=parts.port,
            user=parts.user or self.options["user"],
            dbname=parts.dbname or self.options["dbname"],
            sslmode=parts.params.get("sslmode"),
            sslrootcert=parts.params.get("sslrootcert"),
            application_name=self.application_name,
            options={**self.driver_options(), **(self.settings.connect_kwargs or {})},
            addresses=parts.addresses,
            dsn_params={k: v for k, v in parts.params.items() if k not in _OWN_PARAMS},
        )

    def names_an_endpoint(self) -> bool:
        """Does something say where the database is (else libpq would try the local socket)?"""
        import os

        return bool(self.settings.parts.host or self.options["secret_arn"] or os.environ.get("PGHOST"))

    def driver_options(self) -> dict[str, Any]:
        """Keyword arguments for the driver's connect (e.g. prepared-statement settings)."""
        return {}

    def endpoint(self) -> tuple[str | None, int | None]:
        """Where to connect (sync code); the DSN's host and port unless an adapter looks it up."""
        return self.settings.parts.host, self.settings.parts.port

    # The a* twins below are written by hand: each is the sync method with its one lookup or
    # credential fetch awaited (a generator would be longer than the three methods).
    async def aendpoint(self) -> tuple[str | None, int | None]:
        return self.endpoint()

    def params_for(self, host: str | None, port: int | None) -> ConnectParams:
        from dataclasses import replace

        params = self.base_params()
        if (host, port) != (params.host, params.port):  # an endpoint of the adapter's: one address
            return replace(params, host=host, port=port, addresses=())
        return params

    def _credentials_for(self, host: str | None, port: int | None) -> Any:
        if self.options["iam_auth"] and self.credentials is None:
            from lambdapool.credentials import IamAuthToken

            user = self.base_params().user
            if not user or not host:
                raise ConfigError(
                    "iam_auth needs a host and a database user: put them in the dsn (or set user / LAMBDAPOOL_USER)"
                )
            self.credentials = IamAuthToken(host, port or 5432, user, self.options["region"])
        return self.credentials

    def connect_params(self) -> ConnectParams:
        host, port = self.endpoint()
        params = self.params_for(host, port)
        creds = self._credentials_for(host, port)
        return params if creds is None else _with_secret(params, creds.get())

    async def aconnect_params(self) -> ConnectParams:
        host, port = await self.aendpoint()
        params = self.params_for(host, port)
        creds = self._credentials_for(host, port)
        return params if creds is None else _with_secret(params, await creds.aget())

    def invalidate_credentials(self) -> bool:
        """After an auth failure: forget cached credentials; True if a retry may now succeed."""
        if self.credentials is None or not getattr(self.credentials, "can_refresh", False):
            return False
        self.credentials.invalidate()
        return True

    # -- warm-keeping ----------------------------------------------------------------------
    def may_close(self) -> bool:
        """Could ``keep_warm`` (with refused=False) say no now? False lets a warm invocation end
        without calling it (it is on every invocation's path). True whenever a subclass has its
        own keep_warm and does not say otherwise."""
        cls = type(self)
        return cls.keep_warm is not Adapter.keep_warm or cls.akeep_warm is not Adapter.akeep_warm

    def keep_warm(self, driver: Driver, conn: Connection, refused: bool) -> bool:
        """End of each invocation, connection idle (sync drivers): False closes it.
        ``refused``: its connect needed retries (the server or pooler was full)."""
        return True

    async def akeep_warm(self, driver: AsyncDriver, conn: Connection, refused: bool) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        """What this pooler is and, where it can tell, how it is doing."""
        return {"pooler": self.name, "target": self.base_params().where()}


def _with_secret(params: ConnectParams, secret: Any) -> ConnectParams:
    from dataclasses import replace

    return replace(
        params,
        password=secret.password,
        user=params.user or secret.username,
        host=params.host or secret.host,
        port=params.port or secret.port,
        dbname=params.dbname or secret.dbname,
    )
