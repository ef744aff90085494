"""asyncpg. Semantics follow asyncpg.Pool: statements autocommit; on release an open
transaction is rolled back (the block does not commit for you: use ``conn.transaction()``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

from lambdapool._drivers.base import ConnectParams, Probes
from lambdapool._drivers.params import asyncpg_arguments, set_keepalives


def ssl_argument(p: ConnectParams) -> Any:
    if p.sslrootcert and p.sslmode in ("verify-ca", "verify-full"):
        import ssl

        ctx = ssl.create_default_context(cafile=p.sslrootcert)
        ctx.check_hostname = p.sslmode == "verify-full"
        return ctx
    return p.sslmode  # asyncpg takes libpq's mode names; None means its default, 'prefer'


def connect_arguments(p: ConnectParams, timeout: float) -> dict[str, Any]:
    """asyncpg.connect's arguments: the addresses as its host and port lists, the DSN's libpq
    parameters in its own terms (drivers.params: those it reads from a DSN, server_settings
    for application_name and options), then the user's connect_kwargs."""
    native, server_settings = asyncpg_arguments(p.dsn_params, p.application_name)
    hosts = p.hosts()
    kwargs: dict[str, Any] = {
        "host": [h for h, _ in hosts] if len(hosts) > 1 else p.host,
        "port": [port or 5432 for _, port in hosts] if len(hosts) > 1 else p.port,
        "user": p.user,
        "password": p.password,
        "database": p.dbname,
        "timeout": timeout,
    }
    if native.keys() & _SSL_FILES:  # client certificates and the like: asyncpg builds the context
        native.update({k: v for k, v in (("sslmode", p.sslmode), ("sslrootcert", p.sslrootcert)) if v})
    else:
        kwargs["ssl"] = ssl_argument(p)
        native = {k: v for k, v in native.items() if k not in ("sslmode", "sslrootcert")}
    if native:
        # (a DSN with only a query: asyncpg merges it with the arguments, which win)
        kwargs["dsn"] = "postgresql://?" + urlencode(native)
    if server_settings:
        kwargs["server_settings"] = server_settings
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.update(p.options)
    return kwargs


# DSN parameters that only asyncpg's own SSL set-up takes into account
_SSL_FILES = frozenset(
    {"sslcert", "sslkey", "sslcrl", "sslpassword", "ssl_min_protocol_version", "ssl_max_protocol_version"}
)


class AsyncpgDriver:
    name = "asyncpg"
    is_async: Literal[True] = True

    async def connect(self, params: ConnectParams, timeout: float) -> Any:
        import asyncpg

        conn = await asyncpg.connect(**connect_arguments(params, timeout))
        transport = getattr(conn, "_transport", None)
        set_keepalives(transport.get_extra_info("socket") if transport is not None else None, params.dsn_params)
        return conn

    @staticmethod
    def is_closed(conn: Any) -> bool:
        return bool(conn.is_closed())  # (asyncpg has no type information: bool() for mypy)

    @staticmethod
    def fileno(conn: Any) -> int | None:
        # asyncpg only notices a dead peer when its loop polls the socket; between invocations
        # the loop does not run, so the warm connection watches the socket itself.
        transport = getattr(conn, "_transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        return sock.fileno() if sock is not None else None

    @staticmethod
    def in_transaction(conn: Any) -> bool:
        return bool(conn.is_in_transaction())

    @staticmethod
    def probes(conn: Any) -> Probes:
        # Connection.is_closed() and is_in_transaction() are Python methods over asyncpg's
        # Cython protocol, whose own methods answer with no Python frame at all: these run on
        # every warm invocation. (The protocol object lives as long as the connection, and
        # terminate()/abort mark it closing, so is_connected() turns False.) If asyncpg's
        # internals move, the public methods.
        proto: Any = getattr(conn, "_protocol", None)
        if hasattr(proto, "is_connected") and hasattr(proto, "is_in_transaction"):
            return proto.is_connected, proto.is_in_transaction
        return (lambda: not conn.is_closed()), conn.is_in_transaction

    @staticmethod
    def read_only(conn: Any) -> bool:
        """The server's own report at login (see psycopg_sync.read_only), as asyncpg keeps it."""
        settings = conn.get_settings()
        reported = (getattr(settings, name, None) for name in ("in_hot_standby", "default_transaction_read_only"))
        return "on" in reported

    @staticmethod
    def usable(conn: Any) -> bool:
        return not conn.is_closed()

    async def ping(self, conn: Any) -> None:
        await conn.execute("SELECT 1")  # no arguments: simple protocol, no prepared statement

    async def query_row(self, conn: Any, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        # asyncpg numbers its placeholders; internal queries are written with %s
        n = 0

        def number(_: Any) -> str:
            nonlocal n
            n += 1
            return f"${n}"

        import re

        return tuple(await conn.fetchrow(re.sub(r"%s", number, sql), *params))

    @staticmethod
    def user_settings(conn: Any) -> dict[str, Any]:
        return {}  # asyncpg keeps its settings in connect arguments (connect_kwargs, configure)

    async def apply_user_settings(self, conn: Any, settings: dict[str, Any]) -> None:
        return None

    async def end_transaction(self, conn: Any) -> Literal["rollback"]:
        """A clean block left a transaction open: asyncpg.Pool's release rolls it back."""
        await self.rollback(conn)
        return "rollback"

    async def rollback(self, conn: Any) -> None:
        await conn.execute("ROLLBACK")
        # A transaction the handler started by hand (tr = conn.transaction(); await tr.start())
        # and never finished: asyncpg would go on believing it open and make every later
        # conn.transaction() a SAVEPOINT outside any transaction block. Forgotten as asyncpg's
        # own pool release forgets it (Connection._reset).
        if getattr(conn, "_top_xact", None) is not None:
            conn._top_xact = None

    async def reset(self, conn: Any, configured: str = "") -> None:
        """asyncpg's own reset (advisory locks, cursors, LISTEN and its listeners, RESET ALL),
        temporary tables and sequences; ``configured``: what configure SET, again."""
        await conn.reset()
        await conn.execute(f"DISCARD TEMP; DISCARD SEQUENCES; {configured}")

    async def close(self, conn: Any) -> None:
        await conn.close(timeout=2)

    def terminate(self, conn: Any) -> None:
        conn.terminate()

    def backend_pid(self, conn: Any) -> int:
        return int(conn.get_server_pid())


if TYPE_CHECKING:  # mypy checks that the glue keeps the driver contract
    from lambdapool._drivers.contract import AsyncDriver

    _: AsyncDriver = AsyncpgDriver()
