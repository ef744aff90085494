"""The adapter interface: settings in, connect parameters and driver options out.

An adapter is built once per :class:`lambdapool.Database`. It declares the extra settings it
accepts in ``OPTIONS`` (validated like the core ones, also read from ``LAMBDAPOOL_<NAME>``),
yields :class:`~lambdapool.drivers.ConnectParams` for each connect (credentials resolved,
sync or async), and may veto keeping a connection warm (the direct adapter's budget guard).
"""

from __future__ import annotations

from typing import Any, ClassVar

from lambdapool.config import Setting, Settings, coerce, env_name
from lambdapool.drivers.base import ConnectParams
from lambdapool.errors import ConfigError


class Adapter:
    """Base class: connects where the DSN says, with the DSN's or the ``password`` setting's password."""

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[tuple[Setting, ...]] = ()

    def __init__(self, settings: Settings, *, application_name: str) -> None:
        self.settings = settings
        self.application_name = application_name
        self.options = self._validate(settings.pooler_options)
        self.credentials = self._credentials()

    # -- settings --------------------------------------------------------------------------
    def _validate(self, given: dict[str, Any]) -> dict[str, Any]:
        known = {o.name: o for o in self.OPTIONS}
        unknown = sorted(set(given) - set(known))
        if unknown:
            from lambdapool.config import setting_names

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

    def _credentials(self) -> Any:
        """A credentials provider (lambdapool.credentials) for the password, or None."""
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
            user=parts.user,
            dbname=parts.dbname,
            sslmode=parts.params.get("sslmode"),
            sslrootcert=parts.params.get("sslrootcert"),
            application_name=self.application_name,
            options=self.driver_options(),
        )

    def driver_options(self) -> dict[str, Any]:
        """Keyword arguments for the driver's connect (e.g. prepared-statement settings)."""
        return {}

    def connect_params(self) -> ConnectParams:
        params = self.base_params()
        if self.credentials is None:
            return params
        secret = self.credentials.get()
        return _with_secret(params, secret)

    async def aconnect_params(self) -> ConnectParams:
        params = self.base_params()
        if self.credentials is None:
            return params
        secret = await self.credentials.aget()
        return _with_secret(params, secret)

    def invalidate_credentials(self) -> bool:
        """After an auth failure: forget cached credentials; True if a retry may now succeed."""
        if self.credentials is None or not getattr(self.credentials, "can_refresh", False):
            return False
        self.credentials.invalidate()
        return True

    # -- warm-keeping ----------------------------------------------------------------------
    def keep_warm(self, driver: Any, conn: Any) -> bool:
        """Called at the end of each invocation (sync drivers): False closes the connection."""
        return True

    async def akeep_warm(self, driver: Any, conn: Any) -> bool:
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
