"""Connect retries: transient refusals are retried with backoff, never past the deadline."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

import lambdapool
from lambdapool.testing import wait_for
from tests.support import DRIVERS, LambdaContext, query_handler

pytestmark = pytest.mark.alone  # (bounds on wall-clock time: a deadline is the promise)


def connect_patiently(dsn: str) -> psycopg.Connection:
    """Connect, waiting out the slot of a psql backend that is still exiting."""
    for _ in range(40):
        try:
            return psycopg.connect(dsn)
        except psycopg.OperationalError:
            time.sleep(0.05)
    return psycopg.connect(dsn)


@pytest.fixture
def full_server(pg_factory):
    """A server with max_connections=5 (3 reserved for superusers) whose 2 ordinary slots are taken."""
    pg = pg_factory(max_connections=5)
    pg.psql("CREATE ROLE app LOGIN")
    app_dsn = pg.dsn.replace("postgres@", "app@", 1)
    hogs = [connect_patiently(app_dsn) for _ in range(2)]
    with pytest.raises(psycopg.OperationalError, match="too many clients|remaining connection slots"):
        psycopg.connect(app_dsn)  # the server really is full for ordinary users
    yield pg, app_dsn, hogs
    for conn in hogs:
        conn.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_retries_stop_at_the_deadline_with_connection_unavailable(full_server, make_db, driver):
    pg, app_dsn, _ = full_server
    db = make_db(app_dsn, driver=driver, acquire_timeout=30)
    handler = query_handler(db)
    started = time.monotonic()
    with pytest.raises(lambdapool.ConnectionUnavailable) as info:
        handler({}, LambdaContext(remaining_ms=1500))  # the Lambda deadline is the tighter bound
    elapsed = time.monotonic() - started
    assert elapsed < 1.5, "retries went past the invocation's deadline"
    message = str(info.value)
    assert "attempts" in message and "budget" in message
    assert "too many clients" in message or "remaining connection slots" in message
    assert info.value.__cause__ is not None  # the driver's own error is chained
    assert db.stats()["connect_retries"] >= 1  # (how many fit in 1.5 s depends on the machine's load)


def test_acquire_timeout_bounds_retries_outside_lambda(full_server, make_db):
    pg, app_dsn, _ = full_server
    db = make_db(app_dsn, acquire_timeout=0.8)
    started = time.monotonic()
    with pytest.raises(lambdapool.ConnectionUnavailable):
        with db.connection():
            pass
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("driver", DRIVERS)
def test_refusal_that_clears_is_absorbed_by_the_retries(full_server, make_db, driver):
    pg, app_dsn, hogs = full_server
    db = make_db(app_dsn, driver=driver, acquire_timeout=10)
    handler = query_handler(db)
    result: list[object] = []
    invocation = threading.Thread(target=lambda: result.append(handler({}, LambdaContext())))
    invocation.start()
    # a slot frees up once the server has refused us, while we back off (not after a fixed time:
    # a slow start once reached the server only after the slot was free, and nothing was retried)
    wait_for(lambda: db.stats()["connect_failures"] >= 1, "the server to refuse the first attempt", timeout=10)
    hogs.pop().close()
    invocation.join(15)
    assert len(result) == 1 and isinstance(result[0], int)
    assert db.stats()["connect_retries"] >= 1 and db.stats()["connects"] == 1


def test_database_that_does_not_exist_fails_at_once(pg_server, make_db):
    db = make_db(pg_server.dsn.rsplit("/", 1)[0] + "/no_such_db", acquire_timeout=10)
    started = time.monotonic()
    with pytest.raises(lambdapool.ConnectionUnavailable, match="not transient"):
        with db.connection():
            pass
    assert time.monotonic() - started < 5  # no pointless retries for 10 s


@pytest.fixture
def silent_listener():
    """A TCP port that accepts connections and never says a word: a hanging connect."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    yield srv.getsockname()[1]
    srv.close()


@pytest.mark.parametrize("remaining_ms", [1500, 3000])  # under libpq's 2 s floor, and not whole seconds
@pytest.mark.parametrize("driver", DRIVERS)
def test_hanging_connect_stops_at_the_deadline(silent_listener, make_db, driver, remaining_ms):
    db = make_db(f"postgresql://app@127.0.0.1:{silent_listener}/db", driver=driver, connect_timeout=30)
    handler = query_handler(db)
    started = time.monotonic()
    with pytest.raises(lambdapool.ConnectionUnavailable, match="budget"):
        handler({}, LambdaContext(remaining_ms=remaining_ms))
    assert time.monotonic() - started < remaining_ms / 1000, "the connect outlived the invocation's deadline"
