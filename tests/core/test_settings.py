"""Settings are validated at construction; errors name the setting and what is allowed."""

from __future__ import annotations

import asyncio

import pytest

import lambdapool
from lambdapool._config import parse_dsn, redact_dsn


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"dsn": "mysql://u@h/db"}, "postgresql://"),
        ({"dsn": "host=h port=notaport"}, "port"),
        ({"dsn": "postgresql://u@h:99999/db"}, "port"),
        ({"dsn": "host=h = oops"}, "dsn is malformed"),
        ({"dsn": "postgresql://u@h/db", "driver": "pg8000"}, "driver must be one of psycopg, psycopg-async, asyncpg"),
        ({"dsn": "postgresql://u@h/db", "pooler": "nope"}, "pooler must be one of"),
        ({"dsn": "postgresql://u@h/db", "connect_timeout": -1}, "connect_timeout"),
        ({"dsn": "postgresql://u@h/db", "acquire_timeout": "soon"}, "acquire_timeout must be a float"),
        ({"dsn": "postgresql://u@h/db", "max_per_instance": 0}, "max_per_instance"),
        ({"dsn": "postgresql://u@h/db", "reset_session": "maybe"}, "reset_session must be true or false"),
        ({"dsn": "postgresql://u@h/db", "conect_timeout": 3}, "unknown setting conect_timeout"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_setting(kwargs, names):
    with pytest.raises(lambdapool.ConfigError, match=names.replace("(", r"\(")):
        lambdapool.Database(**kwargs)


def test_config_error_is_a_lambdapool_error_and_a_value_error():
    assert issubclass(lambdapool.ConfigError, lambdapool.LambdapoolError)
    assert issubclass(lambdapool.ConfigError, ValueError)


def test_from_env_reads_lambdapool_variables_and_database_url(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@dbhost:6000/app")
    monkeypatch.setenv("LAMBDAPOOL_CONNECT_TIMEOUT", "2.5")
    monkeypatch.setenv("LAMBDAPOOL_RESET_SESSION", "true")
    db = lambdapool.Database.from_env(driver="asyncpg")
    assert db.settings.parts.host == "dbhost" and db.settings.parts.port == 6000
    assert db.settings.connect_timeout == 2.5 and db.settings.reset_session is True
    assert db.settings.driver == "asyncpg"
    monkeypatch.setenv("LAMBDAPOOL_DSN", "postgresql://u@other/app")
    assert lambdapool.Database.from_env().settings.parts.host == "other"  # LAMBDAPOOL_DSN wins


def test_env_errors_name_the_variable(monkeypatch):
    monkeypatch.setenv("LAMBDAPOOL_DSN", "postgresql://u@h/db")
    monkeypatch.setenv("LAMBDAPOOL_PING_AFTER_IDLE", "often")
    with pytest.raises(lambdapool.ConfigError, match="LAMBDAPOOL_PING_AFTER_IDLE"):
        lambdapool.Database.from_env()


def test_dsn_forms_parse_alike():
    uri = parse_dsn("postgresql://me:p%40ss@db.example:5433/app?sslmode=require")
    kv = parse_dsn("host=db.example port=5433 user=me password='p@ss' dbname=app sslmode=require")
    assert uri == kv
    assert uri.password == "p@ss" and "p@ss" not in repr(uri)


def test_redact_dsn_hides_passwords_in_both_forms():
    assert redact_dsn("postgresql://me:hunter2@h/db") == "postgresql://me:***@h/db"
    assert "hunter2" not in redact_dsn("host=h password=hunter2 user=me")
    assert "hunter 2" not in redact_dsn("host=h password='hunter 2' user=me")


def test_a_plain_with_on_an_async_driver_says_to_use_async_with():
    # A plain def handler is allowed with any driver (it may hand the event to Mangum, which
    # runs its own loop), but a plain `with db.connection()` on an async driver is a mistake.
    db = lambdapool.Database("postgresql://u@h/db", driver="asyncpg")

    @db.lambda_handler
    def handler(event, context):
        with db.connection():
            pass

    with pytest.raises(lambdapool.ConfigError, match=r"use 'async with db.connection\(\)'"):
        handler({}, None)
    assert db.stats()["invocations"] == 1 and db.stats()["open_connections"] == 0


def test_async_with_on_the_sync_driver_says_to_use_with():
    db = lambdapool.Database("postgresql://u@h/db", driver="psycopg")

    async def use() -> None:
        async with db.connection():
            pass

    with pytest.raises(lambdapool.ConfigError, match=r"use 'with db.connection\(\)'"):
        asyncio.run(use())


def test_handler_with_the_wrong_shape_is_refused():
    db = lambdapool.Database("postgresql://u@h/db")
    with pytest.raises(lambdapool.ConfigError, match=r"\(event, context\)"):

        @db.lambda_handler
        def handler(event):
            pass
