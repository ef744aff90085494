"""The admin console (SHOW POOLS / SHOW STATS) and fault injection, seen by real clients."""

from __future__ import annotations

import contextlib
import time

import pytest

from lambdapool.testing import WaitTimeout, wait_for
from tests.proxy.conftest import need_binary, run
from tests.support import terminate


def test_show_pools_and_stats_from_psql_and_psycopg(make_proxy):
    import psycopg

    psql = need_binary("psql")
    proxy = make_proxy(max_backends=3)
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        conn.execute("SELECT 1")
        admin_dsn = proxy.dsn.rsplit("/", 1)[0] + "/pgbouncer"
        out = run([psql, "-X", "-A", "-F", ",", admin_dsn, "-c", "SHOW POOLS"])
        assert out.returncode == 0, out.stderr
        header, row = out.stdout.splitlines()[:2]
        pools = dict(zip(header.split(","), row.split(",")))
        assert pools["pool_mode"] == "transaction" and pools["max_backends"] == "3"
        assert pools["cl_active"] == "2"  # this client and psql itself
        with psycopg.connect(proxy.dsn.rsplit("/", 1)[0] + "/lambdapool", autocommit=True) as admin:
            cur = admin.execute("SHOW STATS")
            stats = dict(zip([c.name for c in cur.description], cur.fetchone()))
            assert int(stats["transactions"]) >= 1 and stats["database"] == "postgres"
            with pytest.raises(psycopg.Error, match="unknown command"):
                admin.execute("SELECT 1")


def test_kill_backends_ends_open_transactions_only(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=2)
    idle = psycopg.connect(proxy.dsn, autocommit=True)
    idle.execute("SELECT 1")
    in_tx = psycopg.connect(proxy.dsn)
    in_tx.execute("SELECT 1")
    proxy.kill_backends()
    with pytest.raises(psycopg.OperationalError):
        in_tx.execute("SELECT 2")
    assert idle.execute("SELECT 3").fetchone() == (3,)  # between transactions: unaffected
    idle.close()
    in_tx.close()
    assert proxy.stats()["backends_closed"] >= 1


def test_refuse_backends_then_recover(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=2)
    proxy.kill_backends()
    proxy.refuse_backends(True)
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.OperationalError, match="could not open a database connection"):
            conn.execute("SELECT 1")
        proxy.refuse_backends(False)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_added_latency_delays_each_request(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=1)
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        proxy.set_latency(0.2)
        started = time.monotonic()
        conn.execute("SELECT 1")
        assert time.monotonic() - started >= 0.2
        proxy.set_latency(0)
        assert proxy.stats()["latency_seconds"] == 0


def test_stop_and_start_listening(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=1)
    kept = psycopg.connect(proxy.dsn, autocommit=True)
    proxy.stop_listening()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn, connect_timeout=2)
    assert kept.execute("SELECT 1").fetchone() == (1,)  # existing clients carry on
    proxy.start_listening()
    with psycopg.connect(proxy.dsn) as again:
        assert again.execute("SELECT 2").fetchone() == (2,)
    kept.close()


def test_hang_on_connect_times_out_clients_until_turned_off(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=1)
    proxy.hang_on_connect(True)
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="timeout"):
        psycopg.connect(proxy.dsn, connect_timeout=1)
    assert time.monotonic() - started >= 0.9
    proxy.hang_on_connect(False)
    with psycopg.connect(proxy.dsn, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_drop_clients(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=1)
    conn = psycopg.connect(proxy.dsn, autocommit=True)
    assert proxy.drop_clients() == 1
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()


def test_cancel_request_reaches_the_backend(make_proxy):
    import threading

    import psycopg

    proxy = make_proxy(max_backends=1)
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        # cancel_safe, not cancel: libpq's blocking PQcancel holds the GIL, and this proxy runs
        # on a thread of this very process.
        threading.Timer(0.3, conn.cancel_safe).start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(10)")
        assert time.monotonic() - started < 5
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_server_restart_is_invisible_to_clients_between_transactions(pg_factory):
    import psycopg

    from lambdapool.testing import LocalProxy

    pg = pg_factory(password="pw")
    with LocalProxy(pg.dsn, max_backends=2) as proxy:
        with psycopg.connect(proxy.dsn, autocommit=True) as conn:
            before = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            pg.restart()
            # The idle backend died with the server; the next transaction gets a new one.
            with contextlib.suppress(WaitTimeout):  # (a bounded wait: what follows asserts)
                wait_for(lambda: not proxy.stats()["backends_idle"], "the proxy to drop its dead idle backend")
            after = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            assert after != before
        assert proxy.stats()["backends_closed"] >= 1


def test_requests_not_yet_answered_move_to_a_new_backend_when_theirs_dies(make_proxy):
    import threading

    import psycopg

    proxy = make_proxy(max_backends=2)
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        conn.execute("SELECT 1")
        proxy.set_latency(1.0)  # the request sits in the proxy, sent but not yet answered
        timer = threading.Timer(0.2, proxy.kill_backends)
        timer.start()
        assert conn.execute("SELECT 2").fetchone() == (2,)
        timer.join()
        proxy.set_latency(0)
    assert proxy.stats()["replayed"] == 1


def test_clients_wait_through_a_database_restart_instead_of_failing(make_proxy, proxy_pg):
    # RDS Proxy holds clients through a failover; so does the proxy, up to borrow_timeout.
    import threading

    import psycopg

    proxy = make_proxy(max_backends=2, borrow_timeout=30)
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        conn.execute("SELECT 1")
        proxy_pg.stop(keep=True)  # the database goes away...
        result: list[object] = []
        query = threading.Thread(target=lambda: result.append(conn.execute("SELECT 2").fetchone()))
        query.start()
        wait_for(lambda: proxy.stats()["waiting"] == 1, "the query to wait for a backend while the database is down")
        proxy_pg.start()  # ...and comes back (from the main thread) once the query is waiting for it
        query.join(30)
        assert result == [(2,)]  # it waited for the database, then was served
    assert proxy.stats()["borrow_timeouts"] == 0


def test_a_backend_killed_under_a_transaction_gives_the_client_one_error(make_proxy, proxy_pg):
    import psycopg

    proxy = make_proxy(max_backends=2)
    conn = psycopg.connect(proxy.dsn)  # a transaction holds its backend until COMMIT
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    terminate(proxy_pg, pid)  # (returns once the backend is gone: its FATAL is on the proxy's socket)
    with pytest.raises(psycopg.OperationalError) as info:  # not "received 2 results from COMMIT"
        conn.commit()
    assert not isinstance(info.value, psycopg.InternalError)
    conn.close()
