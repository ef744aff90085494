"""A warm connection never sticks to a read-only server when a writer is wanted.

A cluster endpoint is a name (``Endpoint``: a relay whose target moves, as DNS does); after a
failover it can lead to the demoted writer, which is up and healthy and refuses every write
with SQLSTATE 25006. A connection that lands there is not kept; one whose statement was refused
is dropped; when the name leads to the writer again, the next invocation writes.
"""

from __future__ import annotations

import threading

import pytest

import lambdapool
from lambdapool.tools.testing.replication import Endpoint
from lambdapool.tools.waiting import wait_for
from tests.failover.support import SCHEMA, writer_handler, written
from tests.support import DRIVERS, LambdaContext


@pytest.fixture
def two_writers(pg_factory):
    """Two servers with the table, and a name that leads to the first."""
    first, second = pg_factory(), pg_factory()
    for pg in (first, second):
        pg.psql(SCHEMA)
    name = Endpoint().start(first)
    yield first, second, name
    name.stop()


def read_only(pg) -> None:
    """The server turns read-only in place, as a demoted writer is (without a restart)."""
    pg.psql("ALTER SYSTEM SET default_transaction_read_only = on")
    pg.psql("SELECT pg_reload_conf()")
    wait_for(lambda: pg.psql("SHOW default_transaction_read_only") == "on", "the reload", 10)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_connection_whose_write_was_refused_as_read_only_is_not_kept(make_db, two_writers, driver):
    first, second, name = two_writers
    db = make_db(name.dsn, driver=driver)
    handler = writer_handler(db)
    assert handler({"id": 1}, LambdaContext()) == first.port  # warm, on the first server
    # WHEN the first server turns read-only (a failover demoted it) and the name moves on
    read_only(first)
    name.point_to(second)
    # THEN the invocation in flight on it fails with 25006 ...
    with pytest.raises(Exception) as failed:
        handler({"id": 2}, LambdaContext())
    assert getattr(failed.value, "sqlstate", None) == "25006"
    # ... and the next one writes on the writer: the warm connection was not kept
    assert handler({"id": 3}, LambdaContext()) == second.port
    assert (written(first), written(second)) == ({1}, {3})
    assert db.stats()["read_only_drops"] == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_new_connection_on_a_read_only_server_is_tried_again_until_the_writer(make_db, two_writers, driver):
    first, second, name = two_writers
    read_only(first)  # the name leads to a demoted writer
    db = make_db(name.dsn, driver=driver, acquire_timeout=60)
    handler = writer_handler(db)
    result: list[object] = []
    invocation = threading.Thread(target=lambda: result.append(_outcome(handler, 7)))
    invocation.start()
    # WHEN the name still leads to the read-only server, the connect lands there and retries
    wait_for(lambda: db.stats()["read_only_drops"] >= 1, "a connect refused as read-only", 30)
    name.point_to(second)  # THEN once DNS catches up, the same invocation writes on the writer
    invocation.join(60)
    assert result == [second.port]
    assert (written(first), written(second)) == (set(), {7})


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_reader_keeps_its_read_only_server(make_db, two_writers, driver):
    first, _second, name = two_writers
    read_only(first)
    for db in (
        make_db(f"{name.dsn}?target_session_attrs=read-only", driver=driver),
        make_db(name.dsn, driver=driver, reader=True),
    ):
        handler = writer_handler(db)
        with pytest.raises(Exception) as refused:  # a write on a reader is the user's mistake, and said so
            handler({"id": 1}, LambdaContext())
        assert getattr(refused.value, "sqlstate", None) == "25006"
        stats = db.stats()
        assert (stats["read_only_drops"], stats["connects"]) == (0, 1)


def test_the_demoted_server_is_named_when_the_deadline_runs_out(make_db, two_writers):
    first, _second, name = two_writers
    read_only(first)
    db = make_db(name.dsn, driver="psycopg", acquire_timeout=1.5)
    with pytest.raises(lambdapool.ConnectionUnavailable, match=r"the server is read-only .* a writer is wanted"):
        writer_handler(db)({"id": 1}, LambdaContext())
    assert db.stats()["read_only_drops"] >= 1 and db.stats()["open_connections"] == 0


def _outcome(handler, id_: int) -> object:
    try:
        return handler({"id": id_}, LambdaContext(remaining_ms=90_000))
    except Exception as exc:  # the test compares it with the expected port
        return exc
