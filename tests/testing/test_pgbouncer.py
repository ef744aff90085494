"""The PgBouncer launcher: real PgBouncer in front of a real throwaway Postgres."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from lambdapool.errors import ConfigError
from lambdapool.tools.backend_count import count_on
from lambdapool.tools.testing.pgbouncer import PgBouncer, PgBouncerNotFound, find_pgbouncer, sweep_orphans
from lambdapool.tools.testing.postgres import ExternalPostgres, PostgresServer
from lambdapool.tools.testing.pytest_plugin import missing
from lambdapool.tools.waiting import wait_for

PASSWORD = 'pa"ss word'


@pytest.fixture(scope="module")
def pgbouncer_bin() -> str:
    try:
        return find_pgbouncer()
    except PgBouncerNotFound as exc:
        missing("PgBouncer", str(exc))
        raise


@pytest.fixture(scope="module")
def backend(pg_session_factory) -> PostgresServer:
    return pg_session_factory(max_connections=20, password=PASSWORD)


def test_transaction_pool_caps_server_backends(pgbouncer_bin, backend):
    # GIVEN a PgBouncer with a pool of 3 in transaction mode
    with PgBouncer(backend, default_pool_size=3) as pgb:
        peak = 0
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def client() -> None:
            try:
                with psycopg.connect(pgb.dsn, prepare_threshold=None) as conn:
                    barrier.wait(10)
                    conn.execute("SELECT pg_sleep(0.3)")
            except BaseException as exc:
                errors.append(exc)

        # WHEN 8 clients each run a transaction at once
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        # (one counting connection for the whole look: a connection per count was itself seen
        # once, still exiting, beside the pool's three)
        with psycopg.connect(backend.dsn, autocommit=True) as counter:
            while any(t.is_alive() for t in threads):
                peak = max(peak, count_on(counter))
        for t in threads:
            t.join()

        # THEN all succeed, the server never held more than the pool, and SHOW reports the pool
        assert errors == []
        assert 1 <= peak <= 3
        pools = {row["database"]: row for row in pgb.show("pools")}
        assert pools["postgres"]["pool_mode"] == "transaction"
        assert pools["postgres"]["sv_idle"] + pools["postgres"]["sv_used"] <= 3
        stats = {row["database"]: row for row in pgb.show("STATS")}
        assert stats["postgres"]["total_xact_count"] >= 8


def test_scram_with_the_plain_password_and_no_secret_in_repr(pgbouncer_bin, backend):
    with PgBouncer(backend) as pgb:
        assert pgb.password == PASSWORD  # taken from the backend's DSN
        with psycopg.connect(pgb.dsn) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        wrong = pgb.dsn.replace("pa%22ss%20word", "wrong")
        assert wrong != pgb.dsn
        with pytest.raises(psycopg.OperationalError, match="authentication failed"):
            psycopg.connect(wrong).close()
        assert "pa" not in repr(pgb).split("pool_mode")[0] and PASSWORD not in repr(pgb)


def test_runs_unprivileged_and_restarts_on_the_same_port(pgbouncer_bin, backend):
    with PgBouncer(backend, max_db_connections=2, extra={"server_idle_timeout": 7}) as pgb:
        port = pgb.port
        status = Path(f"/proc/{pgb.pid}/status").read_text()
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        assert uid != 0
        ini = (pgb.base_dir / "pgbouncer.ini").read_text()
        assert "server_idle_timeout = 7" in ini and "max_db_connections = 2" in ini
        assert {row["key"]: row["value"] for row in pgb.show("config")}["max_db_connections"] == "2"
        pgb.restart()
        assert pgb.port == port
        with psycopg.connect(pgb.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not pgb.running and pgb.base_dir is None


def test_pgbouncer_dies_with_its_owner_and_the_sweep_removes_its_dir(pgbouncer_bin, backend):
    # GIVEN a process that starts a PgBouncer and dies without stopping it
    code = (
        "import json, os, sys; from lambdapool.tools.testing.pgbouncer import PgBouncer; "
        "from lambdapool.tools.testing.postgres import ExternalPostgres; "
        "p = PgBouncer(ExternalPostgres(sys.argv[1])).start(); "
        "print(json.dumps([p.pid, str(p.base_dir)]), flush=True); os._exit(0)"
    )
    out = subprocess.run([sys.executable, "-c", code, backend.dsn], capture_output=True, text=True, timeout=30)
    pid, base_dir = json.loads(out.stdout)

    # THEN PgBouncer follows it (parent-death signal) and the sweep removes what it left
    def gone() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        except FileNotFoundError:
            return True

    wait_for(gone, "PgBouncer to die with its owner", timeout=5)
    assert base_dir in sweep_orphans()
    assert not os.path.exists(base_dir)


def test_missing_binary_and_bad_settings_say_what_to_do(monkeypatch):
    backend = ExternalPostgres("postgresql://postgres@127.0.0.1:1/postgres")
    monkeypatch.setenv("LAMBDAPOOL_PGBOUNCER_BIN", "/nonexistent/pgbouncer")
    with pytest.raises(PgBouncerNotFound, match="LAMBDAPOOL_PGBOUNCER_BIN"):
        PgBouncer(backend).start()
    with pytest.raises(ConfigError, match="pool_mode='sessions'"):
        PgBouncer(backend, pool_mode="sessions")
    monkeypatch.delenv("LAMBDAPOOL_PGBOUNCER_BIN")
    with pytest.raises(ConfigError, match="show"):
        PgBouncer(backend).show("pools; SHUTDOWN")
