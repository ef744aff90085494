"""Settings of the local proxy, validated once, with the reason for each default.

Defaults follow RDS Proxy where it has a knob: ``borrow_timeout`` 120 s (ConnectionBorrowTimeout),
``idle_client_timeout`` 1800 s (IdleClientTimeout), ``max_connections_percent`` 100
(MaxConnectionsPercent) when no absolute ``max_backends`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote

from lambdapool.errors import ConfigError
from lambdapool.tools.proxy.roles import TARGET_SESSION_ATTRS, wanted_attrs

if TYPE_CHECKING:
    from lambdapool.tools.proxy.auth import TokenIssuer

# "iam": RDS IAM tokens (SigV4, checked here); "cloud-sql-iam": Google access tokens, checked
# with the metadata server that issued them
AUTH_MODES = ("trust", "scram", "iam", "cloud-sql-iam")
IAM_MODES = ("iam", "cloud-sql-iam")  # a cleartext password that is a token: TLS only
ADMIN_DATABASES = ("lambdapool", "pgbouncer")


DEFAULT_PORT = 5432
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class BackendTarget:
    """Where the proxy's backends connect, parsed from a libpq URI or ``key=value`` string; ``repr``
    hides the password.

    ``hosts`` are tried in order (libpq's multi-host rule) for a server of the wanted role;
    ``target_session_attrs`` is the DSN's (``None``: not given, the proxy's role decides).
    """

    hosts: tuple[tuple[str, int], ...]
    user: str
    database: str
    password: str | None = field(default=None, repr=False)
    sslmode: str = "prefer"
    target_session_attrs: str | None = None

    @classmethod
    def from_dsn(cls, dsn: str) -> BackendTarget:
        if "://" in dsn:
            params = _uri_params(dsn)
        elif "=" in dsn:
            params = _keyword_params(dsn)
        else:
            raise ConfigError(f"backend: {_FORMS}; got neither")
        return cls._from_params(params)

    @classmethod
    def _from_params(cls, params: dict[str, str]) -> BackendTarget:
        sslmode = params.get("sslmode", "disable")
        if sslmode not in SSLMODES:
            raise ConfigError(f"backend: sslmode={sslmode!r} is not a libpq sslmode ({', '.join(SSLMODES)})")
        attrs = params.get("target_session_attrs")
        if attrs is not None and attrs not in TARGET_SESSION_ATTRS:
            raise ConfigError(
                f"backend: target_session_attrs={attrs!r} is not one of libpq's: {', '.join(TARGET_SESSION_ATTRS)}"
            )
        user = params.get("user") or "postgres"
        return cls(
            hosts=_host_list(params.get("hostaddr") or params.get("host", ""), params.get("port", "")),
            user=user,
            database=params.get("dbname") or user,
            password=params.get("password"),
            sslmode=sslmode,
            target_session_attrs=attrs,
        )

    @property
    def host(self) -> str:
        """The first host (the only one for a single-host DSN)."""
        return self.hosts[0][0]

    @property
    def port(self) -> int:
        return self.hosts[0][1]

    def describe(self) -> str:
        """``host:port[,host:port...]/database``, for banners and messages (no user, no password)."""
        return ",".join(address(h) for h in self.hosts) + f"/{self.database}"

    @property
    def tls(self) -> bool:
        return self.sslmode in ("require", "verify-ca", "verify-full")


_FORMS = (
    "expected a URI like postgresql://user:password@host:port/dbname (several hosts: "
    "postgresql://user@h1:p1,h2:p2/dbname?target_session_attrs=read-write) or libpq key=value pairs "
    "like 'host=h1,h2 port=5432 user=u dbname=db'"
)


def address(host: tuple[str, int]) -> str:
    """``host:port`` (``[v6]:port``; a Unix socket directory as ``dir:port``)."""
    name, port = host
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


def _uri_params(dsn: str) -> dict[str, str]:
    """libpq's URI form: ``postgresql://[user[:password]@][host[:port][,...]][/dbname][?key=value&...]``."""
    scheme, _, rest = dsn.partition("://")
    if scheme not in ("postgres", "postgresql"):
        raise ConfigError(f"backend: {_FORMS}; got a URI with scheme {scheme!r}")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostspec = netloc.rpartition("@")
    params: dict[str, str] = {}
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            params["user"] = unquote(user)
        if colon:
            params["password"] = unquote(password)
    if slash and path:
        params["dbname"] = unquote(path)
    hosts, ports = [], []
    for entry in hostspec.split(",") if hostspec else []:
        host, port = _split_host_port(entry)
        hosts.append(unquote(host))
        ports.append(port)
    if hosts:
        params["host"] = ",".join(hosts)
        params["port"] = ",".join(ports)
    for key, values in parse_qs(query, keep_blank_values=True).items():
        params[key] = values[-1]  # libpq: the query string overrides the URI's parts
    if not params.get("host") and not params.get("hostaddr"):
        raise ConfigError(f"backend: {_FORMS}; got a URI with no host")
    return params


def _split_host_port(entry: str) -> tuple[str, str]:
    if entry.startswith("["):  # [IPv6]:port
        host, _, port = entry[1:].partition("]")
        return host, port.removeprefix(":")
    host, _, port = entry.partition(":")
    return host, port


def _keyword_params(dsn: str) -> dict[str, str]:
    """libpq's ``key=value`` form: values bare or single-quoted, backslash escapes ``\\'`` and ``\\\\``."""
    params: dict[str, str] = {}
    pos, size = 0, len(dsn)
    while True:
        while pos < size and dsn[pos].isspace():
            pos += 1
        if pos == size:
            return params
        eq = dsn.find("=", pos)
        if eq < 0:
            raise ConfigError(f"backend: {_FORMS}; {dsn[pos:].split()[0]!r} has no '=value'")
        key = dsn[pos:eq].strip()
        if not key or any(c.isspace() for c in key):
            raise ConfigError(f"backend: {_FORMS}; found a key=value pair with no key or a space in its key")
        pos = eq + 1
        while pos < size and dsn[pos].isspace():
            pos += 1
        value: list[str] = []
        quoted = pos < size and dsn[pos] == "'"
        pos += quoted
        while pos < size:
            char = dsn[pos]
            if char == "\\" and pos + 1 < size:
                value.append(dsn[pos + 1])
                pos += 2
                continue
            if (quoted and char == "'") or (not quoted and char.isspace()):
                break
            value.append(char)
            pos += 1
        if quoted:
            if pos >= size:
                raise ConfigError(f"backend: the quoted value of {key!r} has no closing quote")
            pos += 1
        params[key] = "".join(value)


def _host_list(hosts_text: str, ports_text: str) -> tuple[tuple[str, int], ...]:
    """libpq's rule: hosts and ports are comma-separated lists; one port applies to every host,
    otherwise there must be one per host (an empty one is the default, 5432)."""
    hosts = hosts_text.split(",") if hosts_text else []
    if not hosts or any(not h for h in hosts):
        raise ConfigError(f"backend: {_FORMS}; got {'an empty host in the list' if hosts else 'no host'}")
    ports = ports_text.split(",") if ports_text else [""]
    if len(ports) == 1:
        ports *= len(hosts)
    elif len(ports) != len(hosts):
        raise ConfigError(
            f"backend: {len(hosts)} hosts ({', '.join(hosts)}) but {len(ports)} ports ({', '.join(ports)}): "
            "give one port for all hosts, or one per host"
        )
    return tuple((host, _port(port)) for host, port in zip(hosts, ports))


def _port(text: str) -> int:
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"backend: port {text!r} is not a TCP port number (1-65535)")
    return int(text)


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
    """Everything :class:`~lambdapool.tools.proxy.LocalProxy` accepts, checked by :meth:`validate`."""

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
    metadata: TokenIssuer | None = field(default=None, repr=False)  # auth="cloud-sql-iam"
    tls: bool = False
    require_tls: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    role: str = "writer"  # RDS Proxy's endpoint kind: "writer" (read/write) or "reader" (read-only)

    @property
    def wanted(self) -> str:
        """The target_session_attrs every backend must meet (the role's, or the DSN's)."""
        return wanted_attrs(self.role, self.backend.target_session_attrs)

    def validate(self) -> None:
        _ = self.wanted  # a role the DSN contradicts is a ConfigError
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
        if self.auth == "cloud-sql-iam" and self.metadata is None:
            raise ConfigError(
                'auth="cloud-sql-iam" needs metadata=MetadataServer(...) (lambdapool.testing): the proxy accepts '
                "exactly the access tokens that metadata server issued, for its service account's user"
            )
        if self.metadata is not None and self.auth != "cloud-sql-iam":
            raise ConfigError(f'metadata: only used with auth="cloud-sql-iam" (auth={self.auth!r} was given)')
        if self.require_tls and not self.tls:
            raise ConfigError("require_tls=True needs tls=True (a certificate, given or self-signed)")
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("cert_file and key_file: give both (PEM certificate and its key) or neither")
