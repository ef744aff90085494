"""SQLAlchemy 2 on lambdapool: ``db.sqlalchemy_engine()`` / ``db.sqlalchemy_async_engine()``.

Real Postgres, reached directly, through the local proxy and through PgBouncer (the ``route``
fixture), with every driver: one warm connection per instance, killed backends replaced with
no failed invocation, nothing left open, the dialect's setup applied to lambdapool's
connection, no pinned session behind the proxy.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

import lambdapool
from lambdapool.errors import ConfigError
from lambdapool.tools.testing.pytest_plugin import in_ci
from tests.frameworks.conftest import kill_backends
from tests.support import LambdaContext

try:
    import greenlet  # noqa: F401  (SQLAlchemy's asyncio needs it)
    import sqlalchemy
    from sqlalchemy import Integer, String, event, select, text
    from sqlalchemy.dialects.postgresql import JSONB
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
except ImportError as exc:
    # (missing() at module level: fail in CI, skip the module on a laptop)
    if in_ci():
        pytest.fail(f"sqlalchemy unavailable: {exc} (CI=true: missing components fail)", pytrace=False)
    pytest.skip(f"sqlalchemy unavailable: pip install 'lambdapool[sqlalchemy]' ({exc})", allow_module_level=True)

DRIVERS = ["psycopg", "psycopg-async", "asyncpg"]
N = 50
KILL_AT = 25  # the server's backends are terminated before this invocation
_names = itertools.count()


def model() -> Any:
    """A fresh ORM model on a table of its own (tests share one server)."""

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = f"sa_items_{next(_names)}"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        name: Mapped[str] = mapped_column(String(50))
        doc: Mapped[dict] = mapped_column(JSONB)

    return Item


def wrapped_loads(s: str | bytes) -> dict:
    return {"decoded_by": "custom", "value": json.loads(s)}


def holder_in_transaction(db: Any) -> bool:
    return any(h.conn is not None and db.driver.in_transaction(h.conn) for h in db._slots.all)


def make_engine(db: Any, **kw: Any) -> Any:
    return db.sqlalchemy_async_engine(**kw) if db.is_async else db.sqlalchemy_engine(**kw)


def create_all(db: Any, engine: Any, Item: Any) -> None:
    """At import time, outside any invocation: a checkout of its own, given back at checkin."""
    if not db.is_async:
        Item.metadata.create_all(engine)
        return

    async def go() -> None:
        async with engine.begin() as conn:
            await conn.run_sync(Item.metadata.create_all)

    db.loop.run(go())


def handler_for(db: Any, engine: Any, Item: Any) -> Any:
    """A Lambda handler: an ORM insert and query in a Session, then a Core query."""
    if not db.is_async:

        @db.lambda_handler
        def handler(event: dict, context: Any) -> dict:
            with Session(engine) as session:
                session.add(Item(id=event["n"], name=f"n{event['n']}", doc={"n": event["n"]}))
                session.commit()
                item = session.scalars(select(Item).where(Item.id == event["n"])).one()
                doc = item.doc
            with engine.connect() as conn:
                count = conn.execute(select(sqlalchemy.func.count()).select_from(Item)).scalar_one()
                pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            return {"doc": doc, "count": count, "pid": pid}

        return handler

    from sqlalchemy.ext.asyncio import AsyncSession

    @db.lambda_handler
    async def ahandler(event: dict, context: Any) -> dict:
        async with AsyncSession(engine) as session:
            session.add(Item(id=event["n"], name=f"n{event['n']}", doc={"n": event["n"]}))
            await session.commit()
            item = (await session.scalars(select(Item).where(Item.id == event["n"]))).one()
            doc = item.doc
        async with engine.connect() as conn:
            count = (await conn.execute(select(sqlalchemy.func.count()).select_from(Item))).scalar_one()
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        return {"doc": doc, "count": count, "pid": pid}

    return ahandler


def drop(db: Any, engine: Any, Item: Any) -> None:
    if not db.is_async:
        Item.metadata.drop_all(engine)
        engine.dispose()
        return

    async def go() -> None:
        async with engine.begin() as conn:
            await conn.run_sync(Item.metadata.drop_all)
        await engine.dispose()

    db.loop.run(go())


@pytest.mark.parametrize("driver", DRIVERS)
def test_fifty_invocations_one_connection_and_a_killed_backend(route, make_db, driver):
    db = make_db(**route.settings(), driver=driver)
    engine = make_engine(db, json_deserializer=wrapped_loads)
    connects: list[int] = []
    event.listen(engine.sync_engine if db.is_async else engine, "connect", lambda dbapi, rec: connects.append(1))
    Item = model()
    create_all(db, engine, Item)  # outside any invocation
    assert db._current.get() is None and db.stats()["open_connections"] == 1
    handler = handler_for(db, engine, Item)
    pids = []
    for n in range(1, N + 1):
        if n == KILL_AT:
            assert route.kill_backends() >= 1
        result = handler({"n": n}, LambdaContext())  # a failure here fails the test
        assert result["doc"] == {"decoded_by": "custom", "value": {"n": n}}  # the dialect's adapters apply
        assert result["count"] == n
        pids.append(result["pid"])
        assert not holder_in_transaction(db)  # nothing left open, on our side ...
        assert route.open_transactions() == 0  # ... nor on the server's
        if n == KILL_AT - 1:
            stats = db.stats()
            assert stats["connects"] == 1  # create_all and 24 invocations: one connection
            assert stats["reuses"] == KILL_AT - 1
            assert len(connects) == 1  # the dialect's on-connect ran once
    stats = db.stats()
    if route.name == "direct":  # (a pooler keeps our client connection and replaces its server side)
        assert stats["connects"] == 2 and stats["reconnects"] == 1  # the killed one, replaced before use
    assert stats["reuses"] == N - stats["reconnects"]  # (the ping that found it dead is not a reuse)
    assert len(connects) == stats["connects"]  # the dialect's setup ran on each new connection, once
    assert stats["invocations"] == N
    if route.name == "direct":
        assert len(set(pids[: KILL_AT - 1])) == 1 and len(set(pids[KILL_AT - 1 :])) == 1
    assert route.pins() == 0
    drop(db, engine, Item)


@pytest.mark.parametrize("driver", DRIVERS)
def test_engine_arguments_apply(route, make_db, driver, caplog):
    """isolation_level (the dialect's on-connect, again after a reconnect), execution_options, echo."""
    db = make_db(**route.settings(), driver=driver)
    engine = make_engine(db, isolation_level="REPEATABLE READ", echo=True,
                         execution_options={"schema_translate_map": {"alias": "pg_catalog"}})  # fmt: skip
    table = sqlalchemy.Table("pg_namespace", sqlalchemy.MetaData(schema="alias"), sqlalchemy.Column("nspname"))
    query = select(table.c.nspname).where(table.c.nspname == "public")

    def check(level: str, nsp: str) -> None:
        assert level == "repeatable read" and nsp == "public"

    if db.is_async:

        @db.lambda_handler
        async def handler(event: dict, context: Any) -> None:
            async with engine.connect() as conn:
                level = (await conn.execute(text("SHOW transaction_isolation"))).scalar_one()
                check(level, (await conn.execute(query)).scalar_one())

    else:

        @db.lambda_handler
        def handler(event: dict, context: Any) -> None:
            with engine.connect() as conn:
                check(conn.execute(text("SHOW transaction_isolation")).scalar_one(), conn.execute(query).scalar_one())

    with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"):
        for n in range(6):
            if n == 3:
                route.kill_backends()
            handler({}, LambdaContext())
    assert any("SHOW transaction_isolation" in r.getMessage() for r in caplog.records)  # echo
    assert db.stats()["connects"] == (2 if route.name == "direct" else 1) and route.pins() == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_connection_made_before_the_engine_gets_the_dialects_setup(fw_pg, make_db, driver):
    db = make_db(fw_pg.dsn, driver=driver)
    sql = "SELECT jsonb_build_object('k', 1)"
    if db.is_async:

        async def first() -> None:
            async with db.invocation_scope(), db.connection():
                pass

        db.loop.run(first())
        engine = db.sqlalchemy_async_engine(json_deserializer=wrapped_loads)

        async def query() -> Any:
            async with db.invocation_scope(), engine.connect() as conn:
                return (await conn.execute(text(sql))).scalar_one()

        value = db.loop.run(query())
    else:
        with db.invocation_scope(), db.connection():
            pass
        engine = db.sqlalchemy_engine(json_deserializer=wrapped_loads)
        with db.invocation_scope(), engine.connect() as conn:
            value = conn.execute(text(sql)).scalar_one()
    assert value == {"decoded_by": "custom", "value": {"k": 1}}
    assert db.stats()["connects"] == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_disconnect_error_drops_the_connection(fw_pg, make_db, driver):
    """SQLAlchemy invalidates on a disconnect error: lambdapool must not keep it warm."""
    db = make_db(fw_pg.dsn, driver=driver)
    engine = make_engine(db)
    kill = text("SELECT pg_terminate_backend(pg_backend_pid())")
    pid_sql = text("SELECT pg_backend_pid()")
    if db.is_async:

        @db.lambda_handler
        async def handler(event: dict, context: Any) -> Any:
            async with engine.connect() as conn:
                if event.get("kill"):
                    with pytest.raises(sqlalchemy.exc.DBAPIError) as err:
                        await conn.execute(kill)
                    assert err.value.connection_invalidated
                    return None
                return (await conn.execute(pid_sql)).scalar_one()

    else:

        @db.lambda_handler
        def handler(event: dict, context: Any) -> Any:
            with engine.connect() as conn:
                if event.get("kill"):
                    with pytest.raises(sqlalchemy.exc.DBAPIError) as err:
                        conn.execute(kill)
                    assert err.value.connection_invalidated
                    return None
                return conn.execute(pid_sql).scalar_one()

    first = handler({}, LambdaContext())
    handler({"kill": True}, LambdaContext())
    assert db.stats()["open_connections"] == 0  # dropped, not kept warm
    second = handler({}, LambdaContext())
    assert second != first and db.stats()["connects"] == 2


def test_wrong_pairing_and_pool_arguments_are_config_errors(fw_pg, make_db):
    sync_db = make_db(fw_pg.dsn, driver="psycopg")
    async_db = make_db(fw_pg.dsn, driver="asyncpg")
    with pytest.raises(ConfigError, match="sqlalchemy_engine"):
        async_db.sqlalchemy_engine()
    with pytest.raises(ConfigError, match="sqlalchemy_async_engine"):
        sync_db.sqlalchemy_async_engine()
    with pytest.raises(ConfigError, match="pool_pre_ping.*liveness"):
        sync_db.sqlalchemy_engine(pool_pre_ping=True)
    with pytest.raises(ConfigError, match="max_lifetime"):
        sync_db.sqlalchemy_engine(pool_recycle=300)
    with pytest.raises(ConfigError, match="connect_kwargs"):
        sync_db.sqlalchemy_engine(connect_args={"sslmode": "require"})
    with pytest.raises(ConfigError, match="max_per_instance"):
        sync_db.sqlalchemy_engine(pool_size=5)


def test_two_connections_at_once_in_one_invocation_is_a_clear_error(fw_pg, make_db):
    db = make_db(fw_pg.dsn, driver="psycopg")
    engine = db.sqlalchemy_engine()
    with db.invocation_scope(), engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        with pytest.raises(lambdapool.LambdapoolError, match="one Session / Connection at a time"):
            engine.connect()
        conn.execute(text("SELECT 1"))  # the first is untouched
    with db.invocation_scope(), engine.connect() as conn:  # and everything was given back
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    assert db.stats()["connects"] == 1


def test_pgbouncer_asyncpg_gets_the_prepared_statement_recipe(fw_pg, make_db):
    """SQLAlchemy's PgBouncer recipe, applied because the pooler is pgbouncer (the route test
    above runs it through PgBouncer 1.18 in transaction mode)."""
    db = make_db(fw_pg.dsn, driver="asyncpg", pooler="pgbouncer")
    engine = db.sqlalchemy_async_engine()
    args = engine.sync_engine.pool._adapter_args
    assert args["prepared_statement_cache_size"] == 0
    assert args["prepared_statement_name_func"]() != args["prepared_statement_name_func"]()


def test_nullpool_creator_recipe_regression(fw_pg, make_db):
    """The user's recipe: SQLAlchemy's own NullPool over ``db.connection().__enter__()``.

    SQLAlchemy closes the DBAPI connection at each checkin (the Session's commit); the next
    checkout's nested db.connection() handed the same closed connection back, and 50 of 50
    invocations failed with "the connection is closed" (before commit eda6baf).
    """
    from sqlalchemy.pool import NullPool

    db = make_db(fw_pg.dsn, driver="psycopg")
    engine = sqlalchemy.create_engine("postgresql+psycopg://", poolclass=NullPool,
                                      creator=lambda: db.connection().__enter__())  # fmt: skip

    @db.lambda_handler
    def handler(event: dict, context: Any) -> int:
        with Session(engine) as session:
            session.execute(text("SELECT 1"))
            session.commit()  # NullPool closes the connection here
            return int(session.execute(text("SELECT 2")).scalar_one())

    failures = 0
    for _ in range(N):
        try:
            assert handler({}, LambdaContext()) == 2
        except Exception:
            failures += 1
    assert failures == 0


def test_default_queuepool_fails_after_a_killed_backend_and_ours_does_not(fw_pg, make_db):
    """The control: SQLAlchemy's own pool keeps the dead connection and the next call fails
    (AdminShutdown); the lambdapool engine replaces it before any statement runs."""
    db = make_db(fw_pg.dsn, driver="psycopg")
    plain = sqlalchemy.create_engine(fw_pg.dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    ours = db.sqlalchemy_engine()

    @db.lambda_handler
    def handler(event: dict, context: Any) -> tuple[int, int]:
        with ours.connect() as a:
            x = a.execute(text("SELECT 1")).scalar_one()
        return x, 0

    with plain.connect() as c:
        c.execute(text("SELECT 1"))
    handler({}, LambdaContext())
    assert kill_backends(fw_pg) >= 2
    with pytest.raises(sqlalchemy.exc.OperationalError), plain.connect() as c:
        c.execute(text("SELECT 1"))
    assert handler({}, LambdaContext()) == (1, 0)
    assert db.stats()["reconnects"] == 1
    plain.dispose()


def test_sqlalchemy_orm_example(fw_pg, monkeypatch):
    monkeypatch.setenv("LAMBDAPOOL_DSN", fw_pg.dsn)
    path = Path(__file__).resolve().parents[2] / "examples" / "sqlalchemy_orm" / "handler.py"
    spec = importlib.util.spec_from_file_location("example_sqlalchemy_orm", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        results = [module.handler({"title": f"note {i}"}, LambdaContext()) for i in range(10)]
        assert [r["count"] for r in results] == list(range(1, 11))
        assert results[-1]["latest"] == "note 9"
        assert len({r["backend_pid"] for r in results}) == 1
        assert module.db.stats()["connects"] == 1
    finally:
        with module.db.invocation_scope(), module.engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS notes"))
        module.db.close()
        sys.modules.pop(spec.name, None)


def test_async_checkout_sees_the_invocation_inside_sqlalchemys_greenlet(fw_pg, make_db):
    """SQLAlchemy runs the pool in a greenlet: the invocation's context variable is visible
    there, so a checkout joins the running invocation (no second, ad-hoc one)."""
    db = make_db(fw_pg.dsn, driver="asyncpg")
    engine = db.sqlalchemy_async_engine()

    async def run() -> None:
        async with db.invocation_scope(), db.connection() as raw, engine.connect() as conn:
            assert conn.sync_connection.connection.driver_connection is raw
            await conn.execute(text("SELECT 1"))

    db.loop.run(run())
    assert asyncio.iscoroutinefunction(run) and db.stats()["connects"] == 1
