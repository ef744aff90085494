"""Settings of the local proxy, validated once, with the reason for each default.

Defaults follow RDS Proxy where it has a knob: ``borrow_timeout`` 120 s (ConnectionBorrowTimeout),
``idle_client_timeout`` 1800 s (IdleClientTimeout), ``max_connections_percent`` 100
(MaxConnectionsPercent) when no absolute ``max_backends`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from lambdapool.errors import ConfigError

AUTH_MODES = ("trust", "scram", "iam")
ADMIN_DATABASES = ("lambdapool", "pgbouncer")


@dataclass(frozen=True)
class BackendTarget:
    """Where the proxy's backends connect: parsed from a libpq URI; ``repr`` hides the password."""

    host: str
    port: int
    user: str
    database: str
    password: str | None = field(default=None, repr=False)
    sslmode: str = "prefer"

    @classmethod
    def from_dsn(cls, dsn: str) -> BackendTarget:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
            raise ConfigError(
                "backend: expected a URI like postgresql://user:password@host:port/dbname, "
                f"got one with scheme {parts.scheme!r} and host {parts.hostname!r}"
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        sslmode = query.get("sslmode", "disable")
        if sslmode not in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"):
            raise ConfigError(f"backend: sslmode={sslmode!r} is not a libpq sslmode")
        user = unquote(parts.username or "postgres")
        return cls(
            host=parts.hostname,
            port=parts.port or 5432,
            user=user,
            database=unquote(parts.path.lstrip("/")) or user,
            password=unquote(parts.password) if parts.password is not None else None,
            sslmode=sslmode,
        )

    @property
    def tls(self) -> bool:
        return self.sslmode in ("require", "verify-ca", "verify-full")


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"listen: expected HOST:PORT (port 0 picks a free one), got {listen!r}")
    return host.strip("[]"), int(port)


def _positive(name: str, value: float | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name}: must be {'>= 0' if allow_zero else '> 0'} (or None for no limit), got {value!r}")


@dataclass
class ProxySettings:
    """Everything :class:`~lambdapool.proxy.LocalProxy` accepts, checked by :meth:`validate`."""

    backend: BackendTarget
    host: str
    port: int
    max_backends: int | None = None
    max_connections_percent: float | None = None
    borrow_timeout: float = 120.0
    idle_client_timeout: float | None = 1800.0
    max_idle_backends: int | None = None
    max_client_connections: int | None = None
    max_connection_rate: float | None = None  # new client logins per second (a token bucket)
    borrow_on_connect: bool = False  # borrow a backend during login, as RDS Proxy does
    backend_max_lifetime: float | None = None
    connect_timeout: float = 10.0
    auth: str = "trust"
    users: dict[str, str] = field(default_factory=dict, repr=False)
    iam_credentials: dict[str, str] = field(default_factory=dict, repr=False)
    region: str | None = None
    tls: bool = False
    require_tls: bool = False
    cert_file: str | None = None
    key_file: str | None = None

    def validate(self) -> None:
        if self.max_backends is not None and self.max_connections_percent is not None:
            raise ConfigError("max_backends and max_connections_percent: give one, not both")
        if self.max_backends is not None and (not isinstance(self.max_backends, int) or self.max_backends < 1):
            raise ConfigError(f"max_backends: must be an integer >= 1, got {self.max_backends!r}")
        if self.max_connections_percent is not None and not 0 < self.max_connections_percent <= 100:
            raise ConfigError(
                f"max_connections_percent: must be in (0, 100] like RDS Proxy's MaxConnectionsPercent, "
                f"got {self.max_connections_percent!r}"
            )
        _positive("borrow_timeout", self.borrow_timeout)
        _positive("idle_client_timeout", self.idle_client_timeout)
        _positive("max_idle_backends", self.max_idle_backends, allow_zero=True)
        _positive("max_client_connections", self.max_client_connections)
        _positive("max_connection_rate", self.max_connection_rate)
        _positive("backend_max_lifetime", self.backend_max_lifetime)
        if self.auth not in AUTH_MODES:
            raise ConfigError(f"auth: must be one of {', '.join(AUTH_MODES)}, got {self.auth!r}")
        if self.auth == "scram" and not self.users:
            raise ConfigError('auth="scram" needs users={"name": "password", ...}')
        if self.auth == "iam" and not self.iam_credentials:
            raise ConfigError('auth="iam" needs iam_credentials={"ACCESS_KEY_ID": "secret access key"}')
        if self.require_tls and not self.tls:
            raise ConfigError("require_tls=True needs tls=True (a certificate, given or self-signed)")
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("cert_file and key_file: give both (PEM certificate and its key) or neither")
