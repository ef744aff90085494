"""The whole DSN reaches the server, for every driver: several hosts in both forms,
target_session_attrs, options, application_name, keepalives; what a driver cannot honour is a
ConfigError that names it."""

from __future__ import annotations

import socket

import pytest

import lambdapool
from lambdapool.testing import free_port
from tests.support import DRIVERS, LambdaContext, query_handler

SETTING = "SELECT current_setting('statement_timeout') || ' ' || current_setting('application_name') || ' ' || inet_server_port()"  # noqa: E501


def _one(db, sql: str = "SELECT inet_server_port()"):
    return query_handler(db)({"sql": sql}, LambdaContext())


@pytest.fixture(scope="module")
def cluster():
    """A primary and a hot standby, for the DSN's target_session_attrs (module-wide: no test here fails over)."""
    from lambdapool.tools.testing.postgres import PostgresNotFound
    from lambdapool.tools.testing.pytest_plugin import missing
    from lambdapool.tools.testing.replication import ReplicatedPostgres

    cluster = ReplicatedPostgres()
    try:
        cluster.start()
    except PostgresNotFound as exc:
        missing("Postgres server binaries", str(exc))
    yield cluster
    cluster.stop()


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("form", ["uri", "keywords"])
def test_several_hosts_in_either_form_are_tried_in_order(make_db, pg_server, driver, form):
    dead = free_port()  # nothing listens there: the connect goes on to the next host
    if form == "uri":
        dsn = f"postgresql://postgres@127.0.0.1:{dead},127.0.0.1:{pg_server.port}/postgres"
    else:
        dsn = f"host=127.0.0.1,127.0.0.1 port={dead},{pg_server.port} user=postgres dbname=postgres"
    db = make_db(dsn, driver=driver)
    assert _one(db) == pg_server.port
    stats = db.stats()
    assert (stats["connects"], stats["connect_retries"]) == (1, 0), "one attempt over the hosts"


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(
    "attrs, lands_on",
    [
        ("any", "first"),
        ("read-write", "primary"),
        ("primary", "primary"),
        ("read-only", "standby"),
        ("standby", "standby"),
        ("prefer-standby", "standby"),
    ],
)
def test_target_session_attrs_picks_the_server(make_db, cluster, driver, attrs, lands_on):
    primary, standby = cluster.primary, cluster.standby
    for first, second in ((primary, standby), (standby, primary)):
        dsn = (
            f"postgresql://postgres@127.0.0.1:{first.port},127.0.0.1:{second.port}/postgres"
            f"?target_session_attrs={attrs}"
        )
        db = make_db(dsn, driver=driver)
        expected = first if lands_on == "first" else primary if lands_on == "primary" else standby
        assert _one(db) == expected.port, (attrs, first is primary)
        assert db.stats()["read_only_drops"] == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_options_application_name_and_keepalives_reach_the_server(make_db, pg_server, driver):
    dsn = (
        f"{pg_server.dsn}?options=-c%20statement_timeout%3D7s&application_name=orders-api"
        "&keepalives_idle=9&keepalives_interval=4&keepalives_count=2&tcp_user_timeout=6000"
    )
    db = make_db(dsn, driver=driver)
    assert _one(db, SETTING) == f"7s orders-api {pg_server.port}"
    assert pg_server.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'orders-api'") == "1"
    assert _keepalives_of(db) == (1, 9, 4, 2, 6000)


@pytest.mark.parametrize("driver", DRIVERS)
def test_keepalives_are_on_by_default(make_db, pg_server, driver):
    db = make_db(pg_server.dsn, driver=driver)
    _one(db)
    assert _keepalives_of(db) == (1, 5, 2, 3, 10000)


def test_the_application_name_setting_wins_over_the_dsns_and_the_dsns_over_ours(make_db, pg_server):
    sql = "SELECT current_setting('application_name')"
    assert _one(make_db(f"{pg_server.dsn}?application_name=from-dsn", application_name="mine"), sql) == "mine"
    assert _one(make_db(f"{pg_server.dsn}?application_name=from-dsn"), sql) == "from-dsn"
    assert _one(make_db(pg_server.dsn), sql).startswith("lambdapool:")


def test_the_dsns_connect_timeout_is_the_attempts_unless_the_setting_is_given():
    assert lambdapool.Database("postgresql://h/db?connect_timeout=3").settings.connect_timeout == 3
    given = lambdapool.Database("postgresql://h/db?connect_timeout=3", connect_timeout=1.5)
    assert given.settings.connect_timeout == 1.5
    assert lambdapool.Database("postgresql://h/db?connect_timeout=0").settings.connect_timeout == 5.0


@pytest.mark.parametrize(
    "dsn, driver, message",
    [
        ("postgresql://h/db?statement_timeout=5s", "psycopg", "'statement_timeout' is not a libpq connection"),
        ("postgresql://h/db?statement_timeout=5s", "asyncpg", "options='-c statement_timeout=...'"),
        ("postgresql://h/db?hostaddr=10.0.0.1", "asyncpg", "'hostaddr' is not supported by driver 'asyncpg'"),
        ("postgresql://h/db?options=-E", "asyncpg", "asyncpg takes only server settings there"),
        ("postgresql://h/db?client_encoding=latin1", "asyncpg", "asyncpg only speaks UTF8"),
        ("postgresql://h/db?target_session_attrs=writer", "psycopg", "expected one of any, read-write"),
        ("host=h1,h2,h3 port=5432,5433", "psycopg", "names 3 hosts and 2 ports"),
        ("postgresql://h1:5432,h2:99999/db", "asyncpg", "port must be a number from 1 to 65535, got '99999'"),
    ],
)
def test_what_a_driver_cannot_honour_is_named(dsn, driver, message):
    with pytest.raises(lambdapool.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lambdapool.Database(dsn, driver=driver)


def test_psycopg_takes_libpq_parameters_asyncpg_has_no_word_for(make_db, pg_server):
    db = make_db(f"{pg_server.dsn}?hostaddr=127.0.0.1&channel_binding=disable", driver="psycopg")
    assert _one(db) == pg_server.port


def test_a_multi_host_dsn_shows_every_host_and_never_the_password():
    db = lambdapool.Database("postgresql://u:s3cret@h1:5432,h2:5433/db?sslpassword=k3y")
    shown = repr(db) + repr(db.settings) + str(db.adapter.describe())
    assert "h1:5432,h2:5433" in str(db.adapter.describe())
    assert "s3cret" not in shown and "k3y" not in shown


# -- the connection's own socket -----------------------------------------------------------------
def _keepalives_of(db) -> tuple[int, ...]:
    """SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT of the warm connection."""
    conn = db._slots.idle[-1].conn  # (the one warm connection, idle between invocations)
    if db.settings.driver == "asyncpg":
        return _options(conn._transport.get_extra_info("socket"))
    with socket.socket(fileno=socket.dup(conn.pgconn.socket)) as sock:
        return _options(sock)


def _options(sock) -> tuple[int, ...]:
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    )
