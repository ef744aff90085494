"""The handler the invariants test invokes, one per driver: what an event asks it to do, done
the way a user would with that driver, and a view of the connection as the handler found it.

Events: ``{"do": "write", "token", "rows", "fails", "explicit"}`` inserts ``rows`` rows (one
statement each; inside ``conn.transaction()`` when ``explicit``) then raises :class:`HandlerFailed`
if ``fails``; ``{"do": "leave_open", "token", "rows", "closed_block"}`` starts a transaction by hand,
inserts, and returns without ending it (out of a ``connection()`` block that is closed, or one
never exited); ``session`` runs SET, CREATE TEMP TABLE and LISTEN; ``settings`` changes the psycopg
connection's ``autocommit``, ``row_factory`` and ``isolation_level``; ``probe`` reads the session's
settings in one statement. Each appends to ``seen`` the view it found the connection in, before
running anything.
"""

from __future__ import annotations

from typing import Any

from psycopg import IsolationLevel
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row, tuple_row

ROW_FACTORIES = {"tuple": tuple_row, "dict": dict_row}
ISOLATION = {None: None, "repeatable read": IsolationLevel.REPEATABLE_READ, "serializable": IsolationLevel.SERIALIZABLE}
INSERT = "INSERT INTO public.invariant_rows (token, n) VALUES (%s, %s)"
SESSION = ("SET work_mem = '1234kB'", "CREATE TEMP TABLE IF NOT EXISTS scratch (x int)", "LISTEN invariants")
PROBE_KEYS = ("search_path", "timezone", "work_mem", "transaction_isolation", "listening", "temp_table", "json", "pid")
PROBE = "SELECT " + ", ".join(
    f"{sql} AS {key}"
    for sql, key in zip(
        (
            "current_setting('search_path')",
            "current_setting('TimeZone')",
            "current_setting('work_mem')",
            "current_setting('transaction_isolation')",
            "(SELECT count(*) FROM pg_listening_channels())::int",
            "to_regclass('pg_temp.scratch') IS NOT NULL",
            "'{}'::json",
            "pg_backend_pid()",
        ),
        PROBE_KEYS,
    )
)
CONFIGURED = {"search_path": "inv, public", "timezone": "Asia/Tokyo"}  # what configure SETs
CONFIGURE_SQL = ("SET search_path TO inv, public", "SET TIME ZONE 'Asia/Tokyo'")


class HandlerFailed(Exception):
    """The handler's own exception: the only one allowed to escape an invocation."""


def name_of(factory: Any) -> str:
    return next((name for name, f in ROW_FACTORIES.items() if f is factory), repr(factory))


def isolation_name(level: Any) -> str | None:
    return None if level is None else level.name.replace("_", " ").lower()


def psycopg_view(conn: Any) -> dict[str, Any]:
    return {
        "in_transaction": conn.info.transaction_status != TransactionStatus.IDLE,
        "autocommit": conn.autocommit,
        "row_factory": name_of(conn.row_factory),
        "isolation": isolation_name(conn.isolation_level),
    }


def probe_result(row: Any) -> dict[str, Any]:
    values = list(row.values()) if isinstance(row, dict) else list(row)
    return {"row_type": type(row).__name__, **dict(zip(PROBE_KEYS, values))}


# -- psycopg (sync) ------------------------------------------------------------------------------


def psycopg_configure(conn: Any) -> None:
    for sql in CONFIGURE_SQL:
        conn.execute(sql)
    conn.commit()
    conn.isolation_level = IsolationLevel.REPEATABLE_READ
    conn.row_factory = dict_row


def psycopg_body(conn: Any, event: dict[str, Any], seen: list[dict[str, Any]]) -> Any:
    seen.append(psycopg_view(conn))
    do = event["do"]
    if do == "write":
        if event["explicit"]:
            with conn.transaction():
                psycopg_insert(conn, event)
        else:
            psycopg_insert(conn, event)
    elif do == "leave_open":
        if conn.autocommit:
            conn.execute("BEGIN")
        psycopg_insert(conn, event)
    elif do == "session":
        for sql in SESSION:
            conn.execute(sql)
    elif do == "settings":
        conn.autocommit = event["autocommit"]
        conn.row_factory = ROW_FACTORIES[event["row_factory"]]
        conn.isolation_level = ISOLATION[event["isolation"]]
    elif do == "probe":
        return probe_result(conn.execute(PROBE).fetchone())
    return None


def psycopg_insert(conn: Any, event: dict[str, Any]) -> None:
    for n in range(event["rows"]):
        conn.execute(INSERT, (event["token"], n))
    if event.get("fails"):
        raise HandlerFailed(event["token"])


def psycopg_handler(db: Any, seen: list[dict[str, Any]]) -> Any:
    @db.lambda_handler
    def handler(event, context):
        if event["do"] == "leave_open" and not event["closed_block"]:
            conn = db.connection().__enter__()  # never exited: the invocation ends with it open
            return psycopg_body(conn, event, seen)
        with db.connection() as conn:
            return psycopg_body(conn, event, seen)

    def outside(event: dict[str, Any]) -> Any:
        with db.connection() as conn:
            return psycopg_body(conn, event, seen)

    return handler, outside


# -- psycopg (async) -----------------------------------------------------------------------------


async def psycopg_async_configure(conn: Any) -> None:
    for sql in CONFIGURE_SQL:
        await conn.execute(sql)
    await conn.commit()
    await conn.set_isolation_level(IsolationLevel.REPEATABLE_READ)
    conn.row_factory = dict_row


async def psycopg_async_body(conn: Any, event: dict[str, Any], seen: list[dict[str, Any]]) -> Any:
    seen.append(psycopg_view(conn))
    do = event["do"]
    if do == "write":
        if event["explicit"]:
            async with conn.transaction():
                await psycopg_async_insert(conn, event)
        else:
            await psycopg_async_insert(conn, event)
    elif do == "leave_open":
        if conn.autocommit:
            await conn.execute("BEGIN")
        await psycopg_async_insert(conn, event)
    elif do == "session":
        for sql in SESSION:
            await conn.execute(sql)
    elif do == "settings":
        await conn.set_autocommit(event["autocommit"])
        conn.row_factory = ROW_FACTORIES[event["row_factory"]]
        await conn.set_isolation_level(ISOLATION[event["isolation"]])
    elif do == "probe":
        return probe_result(await (await conn.execute(PROBE)).fetchone())
    return None


async def psycopg_async_insert(conn: Any, event: dict[str, Any]) -> None:
    for n in range(event["rows"]):
        await conn.execute(INSERT, (event["token"], n))
    if event.get("fails"):
        raise HandlerFailed(event["token"])


def psycopg_async_handler(db: Any, seen: list[dict[str, Any]]) -> Any:
    @db.lambda_handler
    async def handler(event, context):
        if event["do"] == "leave_open" and not event["closed_block"]:
            conn = await db.connection().__aenter__()  # never exited
            return await psycopg_async_body(conn, event, seen)
        async with db.connection() as conn:
            return await psycopg_async_body(conn, event, seen)

    async def block(event: dict[str, Any]) -> Any:
        async with db.connection() as conn:
            return await psycopg_async_body(conn, event, seen)

    return handler, lambda event: db.loop.run(block(event))


# -- asyncpg -------------------------------------------------------------------------------------

ASYNCPG_INSERT = INSERT.replace("%s, %s", "$1, $2")


async def asyncpg_configure(conn: Any) -> None:
    for sql in CONFIGURE_SQL:
        await conn.execute(sql)
    await conn.set_type_codec("json", encoder=str, decoder=lambda s: ("decoded", s), schema="pg_catalog")


async def asyncpg_body(conn: Any, event: dict[str, Any], seen: list[dict[str, Any]]) -> Any:
    seen.append({"in_transaction": conn.is_in_transaction()})
    do = event["do"]
    if do == "write":
        if event["explicit"]:
            async with conn.transaction():
                await asyncpg_insert(conn, event)
        else:
            await asyncpg_insert(conn, event)
    elif do == "leave_open":
        transaction = conn.transaction()
        await transaction.start()  # and never committed nor rolled back
        await asyncpg_insert(conn, event)
    elif do == "session":
        for sql in SESSION:
            await conn.execute(sql)
    elif do == "probe":
        return probe_result(await conn.fetchrow(PROBE))
    return None


async def asyncpg_insert(conn: Any, event: dict[str, Any]) -> None:
    for n in range(event["rows"]):
        await conn.execute(ASYNCPG_INSERT, event["token"], n)
    if event.get("fails"):
        raise HandlerFailed(event["token"])


def asyncpg_handler(db: Any, seen: list[dict[str, Any]]) -> Any:
    @db.lambda_handler
    async def handler(event, context):
        if event["do"] == "leave_open" and not event["closed_block"]:
            conn = await db.connection().__aenter__()  # never exited
            return await asyncpg_body(conn, event, seen)
        async with db.connection() as conn:
            return await asyncpg_body(conn, event, seen)

    async def block(event: dict[str, Any]) -> Any:
        async with db.connection() as conn:
            return await asyncpg_body(conn, event, seen)

    return handler, lambda event: db.loop.run(block(event))


HANDLERS = {"psycopg": psycopg_handler, "psycopg-async": psycopg_async_handler, "asyncpg": asyncpg_handler}
CONFIGURES = {"psycopg": psycopg_configure, "psycopg-async": psycopg_async_configure, "asyncpg": asyncpg_configure}
