"""Bad input and refused logins get the error that names the fix."""

from __future__ import annotations

import warnings

import pytest

import lambdapool
from lambdapool._config import UnknownSettingWarning


@pytest.mark.parametrize("platform_var", ["AWS_LAMBDA_FUNCTION_NAME", "K_SERVICE"])
def test_no_dsn_on_a_platform_is_a_config_error_not_a_unix_socket(monkeypatch, platform_var):
    # Before: libpq silently tried the local unix socket, which a function never has.
    for name in ("DATABASE_URL", "LAMBDAPOOL_DSN", "PGHOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(platform_var, "orders")
    with pytest.raises(lambdapool.ConfigError, match="set LAMBDAPOOL_DSN or DATABASE_URL"):
        lambdapool.Database.from_env()
    with pytest.raises(lambdapool.ConfigError, match="no database configured"):
        lambdapool.Database()


def test_no_dsn_is_fine_where_something_else_names_the_database(monkeypatch):
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "orders")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("PGHOST", "db.internal")  # libpq's own variable: not a silent fallback
    lambdapool.Database()
    monkeypatch.delenv("PGHOST")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    lambdapool.Database(pooler="rds-proxy", proxy_name="orders-proxy", user="app")


def test_a_misspelt_variable_is_reported_with_the_closest_setting(monkeypatch):
    monkeypatch.setenv("LAMBDAPOOL_DSN", "postgresql://u@h/db")
    monkeypatch.setenv("LAMBDAPOOL_MAX_PER_INSTNACE", "2")
    monkeypatch.setenv("LAMBDAPOOL_TEST_DSN", "postgresql://u@h/db")  # the test tools' own: not reported
    with pytest.warns(
        UnknownSettingWarning, match="LAMBDAPOOL_MAX_PER_INSTNACE .*did you mean LAMBDAPOOL_MAX_PER_INSTANCE"
    ):
        db = lambdapool.Database.from_env()
    assert db.settings.max_per_instance == 4


def test_a_pooler_option_is_known_to_its_pooler(monkeypatch):
    monkeypatch.setenv("LAMBDAPOOL_DSN", "postgresql://u@h/db")
    monkeypatch.setenv("LAMBDAPOOL_GUARD_THRESHOLD", "0.5")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownSettingWarning)
        db = lambdapool.Database.from_env()
    assert db.adapter.options["guard_threshold"] == 0.5


@pytest.mark.parametrize("driver", ["psycopg", "psycopg-async", "asyncpg"])
def test_an_unknown_role_is_an_auth_error(pg_server, make_db, driver):
    # Before: psycopg's connect error carries no SQLSTATE, so "role does not exist" (28000)
    # was not recognised and surfaced as ConnectionUnavailable.
    from lambdapool._config import parse_dsn

    parts = parse_dsn(pg_server.dsn)
    dsn = f"postgresql://nobody_here@{parts.host}:{parts.port}/{parts.dbname}"
    db = make_db(dsn, driver=driver)

    if db.is_async:

        async def use() -> None:
            async with db.connection():
                pass

        import asyncio

        with pytest.raises(lambdapool.AuthError, match="rejected the credentials"):
            asyncio.run(use())
    else:
        with pytest.raises(lambdapool.AuthError, match="rejected the credentials"):
            with db.connection():
                pass
