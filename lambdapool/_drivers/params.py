"""The DSN's own libpq parameters, for each driver: passed on, translated, or refused by name.

psycopg is libpq: it takes every parameter as it is. asyncpg speaks the protocol itself and
understands part of libpq's vocabulary in its own terms (a host list, ``target_session_attrs``,
``server_settings``); the TCP keepalives it lacks are set on its socket here. A parameter a
driver cannot honour is a ConfigError when the Database is built, never silently dropped.
"""

from __future__ import annotations

import shlex
import socket
from typing import Any

from lambdapool.errors import ConfigError

# libpq's connection keywords (PQconndefaults, PostgreSQL 18), except host, hostaddr... handled
# as parts of the address. A newer keyword still reaches psycopg through connect_kwargs.
LIBPQ_PARAMETERS = frozenset(
    {
        "hostaddr", "passfile", "channel_binding", "connect_timeout", "client_encoding", "options",
        "application_name", "fallback_application_name", "keepalives", "keepalives_idle",
        "keepalives_interval", "keepalives_count", "tcp_user_timeout", "replication", "gssencmode",
        "sslmode", "sslnegotiation", "sslcompression", "sslcert", "sslkey", "sslcertmode",
        "sslpassword", "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "sslkeylogfile", "requirepeer",
        "ssl_min_protocol_version", "ssl_max_protocol_version", "min_protocol_version",
        "max_protocol_version", "krbsrvname", "gsslib", "gssdelegation", "service",
        "target_session_attrs", "load_balance_hosts", "require_auth", "scram_client_key",
        "scram_server_key", "oauth_issuer", "oauth_client_id", "oauth_client_secret", "oauth_scope",
    }
)  # fmt: skip

TARGET_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
# The values that let a connection sit on a read-only server (a standby, a reader endpoint).
READ_ONLY_OK = frozenset({"any", "read-only", "standby", "prefer-standby"})

# TCP keepalives and the user timeout, for a peer that goes silent without a reset (a failover
# fences the old writer: its packets simply stop). Linux's defaults wait 2 h before the first
# probe and retransmit unacknowledged data for ~15 min: a statement, or the SDK's ping, on such
# a connection would outlast any function timeout. With these, a silent peer is given up on
# after about 10 s whether data is in flight (tcp_user_timeout) or a reply is awaited
# (keepalives: 5 s idle, then 3 probes 2 s apart), which fits a typical function timeout (30 s
# and up) with room for the reconnect; a DSN that sets any of them wins.
KEEPALIVE_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",  # milliseconds
}

# asyncpg: libpq parameters it reads from a DSN itself (connect_utils._parse_connect_dsn_and_args)
ASYNCPG_NATIVE = frozenset(
    {
        "passfile", "sslmode", "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword", "sslnegotiation",
        "ssl_min_protocol_version", "ssl_max_protocol_version", "target_session_attrs", "krbsrvname",
        "gsslib", "service",
    }
)  # fmt: skip
# ... and those lambdapool translates for it
ASYNCPG_TRANSLATED = frozenset(
    {"application_name", "fallback_application_name", "options", "connect_timeout", "client_encoding"}
    | set(KEEPALIVE_DEFAULTS)
)


def check(params: dict[str, str], driver: str) -> None:
    """ConfigError for a DSN parameter libpq does not know, or ``driver`` cannot honour."""
    for name, value in params.items():
        if name not in LIBPQ_PARAMETERS:
            raise ConfigError(
                f"dsn parameter {name!r} is not a libpq connection parameter; a server setting goes in "
                f"options='-c {name}=...' (or set it in configure)"
            )
        if name == "target_session_attrs" and value not in TARGET_SESSION_ATTRS:
            raise ConfigError(f"dsn target_session_attrs={value!r}: expected one of {', '.join(TARGET_SESSION_ATTRS)}")
    if driver == "asyncpg":
        for name in params:
            if name not in ASYNCPG_NATIVE | ASYNCPG_TRANSLATED:
                raise ConfigError(
                    f"dsn parameter {name!r} is not supported by driver 'asyncpg' (asyncpg speaks the protocol "
                    "itself, without libpq); remove it or use driver='psycopg'"
                )
        if params.get("client_encoding", "utf8").lower().replace("-", "") not in ("utf8", "unicode"):
            raise ConfigError("dsn client_encoding: asyncpg only speaks UTF8; remove it or use driver='psycopg'")
        options_settings(params.get("options", ""))  # (refuses what is not -c name=value)
        for name in KEEPALIVE_DEFAULTS:
            if name in params and not params[name].strip().isdigit():
                raise ConfigError(f"dsn {name}={params[name]!r}: expected a whole number")


def wants_writer(params: dict[str, str]) -> bool:
    """Does the DSN want a server that accepts writes? Yes unless it says otherwise."""
    return params.get("target_session_attrs", "read-write") not in READ_ONLY_OK


def options_settings(options: str) -> dict[str, str]:
    """libpq's ``options`` (``-c name=value`` / ``--name=value``) as server settings."""
    out: dict[str, str] = {}
    words = shlex.split(options)  # (libpq escapes a space in a value as "\ ", as a shell does)
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            i += 1
            word = "--" + words[i]
        elif word.startswith("-c"):
            word = "--" + word[2:]
        name, eq, value = word[2:].partition("=") if word.startswith("--") else ("", "", "")
        if not name or not eq:
            raise ConfigError(
                f"dsn options={options!r}: asyncpg takes only server settings there (-c name=value); "
                "use driver='psycopg' for other command-line options"
            )
        out[name.replace("-", "_")] = value
        i += 1
    return out


def asyncpg_arguments(params: dict[str, str], application_name: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """The DSN query asyncpg reads itself, and its ``server_settings``."""
    native = {k: v for k, v in params.items() if k in ASYNCPG_NATIVE}
    settings = options_settings(params.get("options", ""))
    name = application_name or params.get("fallback_application_name")
    if name:
        settings["application_name"] = name
    return native, settings


def keepalive_options(params: dict[str, str]) -> dict[str, str]:
    """The keepalive parameters for a connect: the defaults, under what the DSN says."""
    return {k: params.get(k, v) for k, v in KEEPALIVE_DEFAULTS.items()}


def set_keepalives(sock: Any, params: dict[str, str]) -> None:
    """What libpq does with the keepalive parameters, on a socket of ours (asyncpg's)."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # (a Unix socket: no TCP to keep alive)
    opts = keepalive_options(params)
    on = opts["keepalives"] != "0"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(on))
    for name, option in (
        ("keepalives_idle", "TCP_KEEPIDLE"),
        ("keepalives_interval", "TCP_KEEPINTVL"),
        ("keepalives_count", "TCP_KEEPCNT"),
        ("tcp_user_timeout", "TCP_USER_TIMEOUT"),
    ):
        if hasattr(socket, option) and (on or name == "tcp_user_timeout") and int(opts[name]) > 0:
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), int(opts[name]))
