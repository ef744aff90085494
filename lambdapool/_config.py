"""Settings: from code or ``LAMBDAPOOL_*`` environment variables, validated once at init.

Each setting resolves as argument, then environment variable, then default (Powertools'
order). The schema is written once, as the fields of :class:`Settings` (each with its kind,
default and why that default); ``SETTINGS`` reads it for validation, the environment and the
docs' settings table. Pooler-specific settings (``proxy_name``, ``secret_arn``...) are declared
by each adapter and validated the same way (:func:`coerce`).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from lambdapool.errors import ConfigError

DRIVERS = ("psycopg", "psycopg-async", "asyncpg")
ENV_PREFIX = "LAMBDAPOOL_"

PasswordSource = str | Callable[[], Any] | None


@dataclass(frozen=True)
class Setting:
    name: str
    kind: type
    default: Any
    why: str


def setting(kind: type, default: Any, why: str, *, repr: bool = True) -> Any:
    """A field of :class:`Settings` that is a setting: its kind (for validation), default and why."""
    return field(default=default, repr=repr, metadata={"kind": kind, "why": why})


# The driver's connect arguments that are settings of their own (in the DSN or a setting).
RESERVED_CONNECT_KWARGS = frozenset({"host", "port", "user", "password", "dbname", "database", "dsn", "conninfo"})

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _default(setting: Setting) -> Any:
    if setting.name == "max_per_instance":
        from lambdapool._runtime import detect_platform

        return LAMBDA_MAX_PER_INSTANCE if detect_platform() == "aws-lambda" else setting.default
    return setting.default


LAMBDA_MAX_PER_INSTANCE = 1


def coerce(name: str, value: Any, kind: type, *, source: str = "") -> Any:
    """Convert ``value`` (maybe an env string) to ``kind``, or raise ConfigError naming ``name``."""
    where = f" (from {source})" if source else ""
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{name}{where} must be true or false, got {value!r}")
    if kind in (int, float):
        try:
            number = kind(value)
            if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"{name}{where} must be a {kind.__name__}, got {value!r}") from None
        if number < 0:
            raise ConfigError(f"{name}{where} must be zero or more, got {value!r}")
        return number
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{name}{where} must be a string, got {type(value).__name__}")
    if kind is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ConfigError(f'{name}{where} must be a JSON object such as {{"key": "value"}}') from None
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{name}{where} must be a mapping of names to values, got {type(value).__name__}")
        return dict(value)
    if kind is object and name == "configure" and not callable(value):
        raise ConfigError(f"configure must be a callable taking the new connection, got {type(value).__name__}")
    return value


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def from_environment(names: list[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """The ``LAMBDAPOOL_<NAME>`` values set for ``names`` (DATABASE_URL stands in for the DSN)."""
    env = os.environ if environ is None else environ
    found = {n: env[env_name(n)] for n in names if env_name(n) in env}
    if "dsn" in names and "dsn" not in found and env.get("DATABASE_URL"):
        found["dsn"] = env["DATABASE_URL"]
    return found


# -- DSN ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DsnParts:
    """A parsed DSN. ``host``/``port`` are the first address; ``addresses`` all of them, in
    order (a libpq multi-host DSN names several). ``params``: every other libpq parameter, as
    given. ``repr`` never shows the password."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    dbname: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    addresses: tuple[tuple[str | None, int | None], ...] = ()

    def __repr__(self) -> str:
        return (
            f"DsnParts(addresses={self.addresses!r}, user={self.user!r}, dbname={self.dbname!r}, "
            f"params={redact_values(self.params)!r})"
        )


_KV_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)")
_URI_SCHEMES = ("postgresql", "postgres")


def parse_dsn(dsn: str) -> DsnParts:
    """Parse a libpq URI or key=value string, multi-host included; errors never echo the password."""
    if not isinstance(dsn, str) or not dsn.strip():
        raise ConfigError("dsn must be a non-empty string such as postgresql://user@host:5432/dbname")
    dsn = dsn.strip()
    if "://" in dsn:
        return _parse_uri(dsn)
    values: dict[str, str] = {}
    pos = 0
    while pos < len(dsn):
        m = _KV_RE.match(dsn, pos)
        if not m:
            raise ConfigError(
                f"dsn is malformed near character {pos}: expected key=value pairs "
                "(host=... port=... dbname=... user=...) or a postgresql:// URI"
            )
        raw = m.group(2)
        if raw.startswith("'"):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        values[m.group(1)] = raw
        pos = m.end()
        while pos < len(dsn) and dsn[pos].isspace():
            pos += 1
    return _from_mapping(values)


def _parse_uri(dsn: str) -> DsnParts:
    scheme, _, rest = dsn.partition("://")
    if scheme not in _URI_SCHEMES:
        raise ConfigError(f"dsn scheme must be postgresql:// or postgres://, got {scheme}://")
    parts = urlsplit(f"{scheme}://x{rest[_netloc_end(rest) :]}")  # the path and query, netloc aside
    netloc = rest[: _netloc_end(rest)]
    userinfo, at, hostspec = netloc.rpartition("@")
    values = dict(parse_qsl(parts.query, keep_blank_values=True))
    if hostspec:
        hosts, ports = zip(*(_split_hostport(h) for h in hostspec.split(",")))
        if any(hosts):
            values.setdefault("host", ",".join(hosts))
        if any(ports):
            values.setdefault("port", ",".join(ports))
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            values.setdefault("user", unquote(user))
        if colon:
            values.setdefault("password", unquote(password))
    if parts.path and parts.path != "/":
        values.setdefault("dbname", unquote(parts.path.lstrip("/")))
    return _from_mapping(values)


def _netloc_end(rest: str) -> int:
    return min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))


def _split_hostport(spec: str) -> tuple[str, str]:
    """One ``host[:port]`` of a URI's host list (``[v6]:port`` for IPv6)."""
    if spec.startswith("["):
        host, _, after = spec[1:].partition("]")
        if after and not after.startswith(":"):
            raise ConfigError("dsn has an invalid host: expected [IPv6]:port in the URI's host list")
        return unquote(host), after[1:]
    host, _, port = spec.partition(":")
    return unquote(host), port


def _from_mapping(values: dict[str, str]) -> DsnParts:
    hosts = values.pop("host", "").split(",")
    raw_ports = values.pop("port", "").split(",")
    if len(raw_ports) > 1 and len(raw_ports) != len(hosts):
        raise ConfigError(
            f"dsn names {len(hosts)} host{'s' if len(hosts) > 1 else ''} and {len(raw_ports)} ports: "
            "give one port for all of them or one per host, in the same order"
        )
    ports = [_port(p) for p in raw_ports] * (len(hosts) if len(raw_ports) == 1 else 1)
    addresses = tuple((h or None, p) for h, p in zip(hosts, ports))
    if addresses == ((None, None),):
        addresses = ()
    first_host, first_port = addresses[0] if addresses else (None, None)
    return DsnParts(
        host=first_host,
        port=first_port,
        user=values.pop("user", None) or None,
        password=values.pop("password", None),
        dbname=values.pop("dbname", None) or None,
        params=values,
        addresses=addresses,
    )


def _port(port: str) -> int | None:
    port = port.strip()
    if not port:
        return None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"dsn port must be a number from 1 to 65535, got {port!r}")
    return int(port)


def redact_dsn(dsn: str | None) -> str:
    """The DSN with any password replaced by ``***`` (for logs and reprs), whatever characters
    the password holds."""
    if not dsn:
        return repr(dsn)
    scheme, sep, rest = dsn.partition("://")
    if sep:
        # The userinfo as _parse_uri (urlsplit) takes it: up to the LAST "@" before the first
        # "/", "?" or "#", so a password with an unencoded "@" is hidden whole.
        end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
        userinfo, at, hostport = rest[:end].rpartition("@")
        if at and ":" in userinfo:
            rest = f"{userinfo.split(':', 1)[0]}:***@{hostport}{rest[end:]}"
        # A password with "/", "?" or "#" in it ends urlsplit's netloc early: hide up to an "@"
        # anyway (what libpq would take as the password).
        rest = re.sub(r"^([^:/@]*:)[^@]*@", r"\1***@", rest)
        dsn = scheme + sep + rest
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn)


def redact_values(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` for a repr: a ``*password*`` value hidden, DSNs redacted (``sslpassword``,
    ``pgbouncer_admin_dsn``)."""
    return {
        k: "***" if "password" in k.lower() else redact_dsn(v) if isinstance(v, str) and v else v
        for k, v in values.items()
    }


# -- Settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Validated core settings, and their schema: each field a setting, its type, its default
    and why that default (:func:`setting`); validation, the environment and the docs read them
    through ``SETTINGS``. Build with :meth:`build`; ``repr`` hides secrets."""

    dsn: str | None = setting(str, None, "libpq URI or key=value string; falls back to DATABASE_URL")
    driver: str = setting(str, "psycopg", "psycopg (sync), psycopg-async or asyncpg")
    pooler: str = setting(str, "direct", "direct, rds-proxy, pgbouncer, local, or a plugin's name")
    connect_timeout: float = setting(
        float,
        5.0,
        "seconds for one connect attempt; a healthy pooler answers in milliseconds",
    )
    acquire_timeout: float = setting(
        float,
        10.0,
        "seconds to get a connection, retries included; never past the invocation's deadline",
    )
    ping_after_idle: float = setting(
        float,
        60.0,
        "idle seconds after which a round-trip ping replaces the free socket check: only a round "
        "trip finds a peer that vanished without a FIN (NAT, proxy timeouts)",
    )
    invocation_timeout: float = setting(
        float,
        60.0,
        "seconds an invocation may run where the platform gives no deadline (Cloud Functions, local)",
    )
    max_per_instance: int = setting(
        int,
        4,
        "connections one instance may hold for concurrent requests (Cloud Functions); 1 on Lambda, "
        "which sends a process one invocation at a time (a web server's tail of one request then "
        "waits instead of opening a second). Fleet cost = instances x this",
    )
    reset_session: bool = setting(
        bool,
        False,
        "reset session state (SET, temp tables, LISTEN, advisory locks) after each invocation; "
        "costs a round trip, and pins sessions behind RDS Proxy",
    )
    prewarm: bool = setting(
        bool,
        False,
        "connect during init (useful with provisioned concurrency / SnapStart is not: connections "
        "are closed before the snapshot)",
    )
    emit_metrics: bool = setting(
        bool,
        False,
        "print one CloudWatch Embedded Metric Format line per invocation (no API call)",
    )
    application_name: str | None = setting(str, None, "shown in pg_stat_activity; default lambdapool:<function name>")
    handle_sigterm: bool = setting(bool, True, "close connections on SIGTERM, chaining any handler already installed")
    password: PasswordSource = setting(
        str,
        None,
        "password (or a callable returning one) when it is not in the DSN",
        repr=False,
    )
    max_lifetime: float = setting(
        float,
        3600.0,
        "seconds after which a connection is replaced at the next acquire (never mid-invocation), "
        "as psycopg_pool does: a backend's memory grows with its life, and new connections spread "
        "over a proxy's or replica's new capacity; 0 keeps them forever",
    )
    configure: Callable[[Any], Any] | None = setting(
        object,
        None,
        "callable run on every new connection (register adapters, set row_factory), as "
        "psycopg_pool's configure; async drivers may give a coroutine function",
    )
    connect_kwargs: dict[str, Any] | None = setting(
        dict,
        None,
        "extra keyword arguments for the driver's connect (JSON object in the environment); they "
        "win over the pooler's defaults",
        repr=False,
    )
    metrics_namespace: str | None = setting(
        str,
        None,
        "CloudWatch namespace of the metrics; default POWERTOOLS_METRICS_NAMESPACE, else lambdapool",
    )
    metrics_dimensions: dict[str, str] | None = setting(
        dict,
        None,
        "metric dimensions (JSON object in the environment); default "
        "service=POWERTOOLS_SERVICE_NAME when set, else FunctionName=<function>",
    )
    # derived, not settings
    parts: DsnParts = field(repr=False, default_factory=DsnParts)
    pooler_options: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr and f.name != "dsn"}
        shown["pooler_options"] = redact_values(self.pooler_options)  # (pgbouncer_admin_dsn)
        return f"Settings(dsn={redact_dsn(self.dsn)}, {', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def build(cls, values: dict[str, Any], *, env: dict[str, str] | None = None) -> Settings:
        """Validate ``values`` (code) over ``env`` (strings from LAMBDAPOOL_*); unknown names are
        returned in ``pooler_options`` for the adapter to validate."""
        env = env or {}
        resolved: dict[str, Any] = {}
        given = set()  # the settings set in code or the environment
        for s in SETTINGS:
            if s.name in values and values[s.name] is not None:
                raw, source = values[s.name], ""
            elif s.name in env:
                raw, source = env[s.name], env_name(s.name)
            else:
                resolved[s.name] = _default(s)
                continue
            given.add(s.name)
            if s.name == "password" and callable(raw):
                resolved[s.name] = raw
                continue
            resolved[s.name] = coerce(s.name, raw, s.kind, source=source)
        extra = {k: v for k, v in values.items() if k not in _BY_NAME}
        extra.update({k: v for k, v in env.items() if k not in _BY_NAME and k not in extra})

        if resolved["driver"] not in DRIVERS:
            raise ConfigError(f"driver must be one of {', '.join(DRIVERS)}; got {resolved['driver']!r}")
        if resolved["max_per_instance"] < 1:
            raise ConfigError("max_per_instance must be at least 1")
        if resolved["connect_timeout"] == 0 or resolved["acquire_timeout"] == 0:
            raise ConfigError("connect_timeout and acquire_timeout must be more than 0 seconds")
        reserved = sorted(RESERVED_CONNECT_KWARGS & set(resolved["connect_kwargs"] or ()))
        if reserved:
            raise ConfigError(
                f"connect_kwargs may not set {', '.join(reserved)}: put the endpoint, user and database "
                "in the dsn (and the password in the dsn, password= or a secret)"
            )
        parts = parse_dsn(resolved["dsn"]) if resolved["dsn"] else DsnParts()
        from lambdapool._drivers.params import check

        check(parts.params, resolved["driver"])
        if "connect_timeout" not in given and parts.params.get("connect_timeout", "").strip().isdigit():
            seconds = int(parts.params["connect_timeout"])  # (libpq: 0 waits for ever; ours keeps its default)
            resolved["connect_timeout"] = float(seconds) if seconds > 0 else resolved["connect_timeout"]
        return cls(**resolved, parts=parts, pooler_options=extra)


# The settings, in the order of the fields: validation, the environment and the docs read this.
SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f.name, f.metadata["kind"], f.default, f.metadata["why"]) for f in fields(Settings) if "kind" in f.metadata
)
_BY_NAME = {s.name: s for s in SETTINGS}


def setting_names() -> list[str]:
    return [s.name for s in SETTINGS]


class UnknownSettingWarning(UserWarning):
    """A ``LAMBDAPOOL_*`` variable that names no setting (a typo, most likely)."""


# LAMBDAPOOL_* variables that are not Database settings: the test tools' own.
TOOL_VARIABLES = frozenset({"TEST_DSN", "TEST_SENTINEL", "PG_BIN", "PG_USER", "PGBOUNCER_BIN", "PROXY_BACKEND"})


def warn_unknown_variables(known: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """Warn about each ``LAMBDAPOOL_*`` variable that names none of ``known``, with the closest
    name; returns the unknown variables."""
    import difflib  # (only here: it is not on the cold path)

    env = os.environ if environ is None else environ
    names = {env_name(n): n for n in known}
    unknown = []
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in names or var[len(ENV_PREFIX) :] in TOOL_VARIABLES:
            continue
        unknown.append(var)
        close = difflib.get_close_matches(var, list(names), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f"; settings: {', '.join(sorted(names))}"
        warnings.warn(f"{var} is not a lambdapool setting and is ignored{hint}", UnknownSettingWarning, stacklevel=3)
    return unknown
