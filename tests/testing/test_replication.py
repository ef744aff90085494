"""The replicated test cluster: a real primary and hot standby, a real failover, and the endpoint
name that still leads to the demoted writer until "DNS" catches up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from lambdapool.errors import ConfigError
from lambdapool.tools.spawning import pid_alive
from lambdapool.tools.testing.postgres import PostgresNotFound, sweep_orphans
from lambdapool.tools.testing.pytest_plugin import missing
from lambdapool.tools.testing.replication import ReplicatedPostgres
from lambdapool.tools.waiting import wait_for

PASSWORD = "it's a \\ secret"


def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


def server_port(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT inet_server_port()").fetchone()
    assert row is not None
    return int(row[0])


def assert_read_only(dsn: str) -> None:
    """A hot standby: in recovery, read-only, and a write fails with SQLSTATE 25006."""
    with connect(dsn) as conn:
        assert conn.info.parameter_status("in_hot_standby") == "on"
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as refused:
            conn.execute("CREATE TABLE refused (x int)")
        assert refused.value.sqlstate == "25006"


def endpoint_threads() -> int:
    return sum(t.name == "lambdapool-endpoint" and t.is_alive() for t in threading.enumerate())


@pytest.fixture(scope="module")
def cluster() -> Iterator[ReplicatedPostgres]:
    """One cluster for the tests that neither fail over nor stop a server; with a password, so
    clients and the standby's replication connection use SCRAM."""
    try:
        with ReplicatedPostgres(max_connections=20, password=PASSWORD) as shared:
            yield shared
    except PostgresNotFound as exc:
        missing("Postgres server binaries", str(exc))


def test_a_write_on_the_primary_is_replayed_on_the_standby(cluster):
    with connect(cluster.primary.dsn) as conn:
        conn.execute("CREATE TABLE replayed (x int)")
        conn.execute("INSERT INTO replayed VALUES (42)")
    cluster.wait_replicated()
    with connect(cluster.standby.dsn) as conn:
        assert conn.execute("SELECT x FROM replayed").fetchall() == [(42,)]
    assert PASSWORD not in repr(cluster)


def test_the_standby_is_a_hot_standby_that_refuses_writes(cluster):
    assert_read_only(cluster.standby.dsn)
    with connect(cluster.primary.dsn) as conn:
        assert conn.info.parameter_status("in_hot_standby") == "off"


def test_point_to_moves_new_connections_and_leaves_open_ones(cluster):
    # GIVEN a connection opened through the endpoint while it names the primary
    with connect(cluster.endpoint.dsn) as held:
        assert server_port(held) == cluster.primary.port
        # WHEN the name is pointed at the standby
        cluster.endpoint.point_to(cluster.standby)
        try:
            # THEN new connections reach the standby, and the open one stays on the primary
            with connect(cluster.endpoint.dsn) as moved:
                assert server_port(moved) == cluster.standby.port
            assert server_port(held) == cluster.primary.port
            assert cluster.endpoint.target is cluster.standby
        finally:
            cluster.endpoint.point_to(cluster.primary)


def test_drop_all_closes_every_relayed_connection(cluster):
    conns = [connect(cluster.endpoint.dsn) for _ in range(3)]
    try:
        wait_for(lambda: cluster.endpoint.connections == 3, "three relayed connections")
        assert cluster.endpoint.drop_all() == 3
        assert cluster.endpoint.connections == 0
        for conn in conns:
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        # the server's backends end too, and the endpoint still relays new connections
        wait_for(lambda: cluster.primary.backends() == 0, "the dropped connections' backends to end")
        with connect(cluster.endpoint.dsn) as conn:
            assert server_port(conn) == cluster.primary.port
    finally:
        for conn in conns:
            conn.close()


def test_failover_promotes_the_standby_and_the_old_writer_returns_read_only(pg_replication):
    # GIVEN a cluster with data, and a client connected to the writer through the endpoint
    cluster = pg_replication(max_connections=20)
    old_primary, old_standby = cluster.primary, cluster.standby
    old_port = old_primary.port
    with connect(cluster.endpoint.dsn) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (1)")
    client = connect(cluster.endpoint.dsn)

    # WHEN the writer fails over
    timings = cluster.failover()

    # THEN the client's connection dropped, and the roles swapped
    with pytest.raises(psycopg.OperationalError):
        client.execute("SELECT 1")
    client.close()
    assert cluster.primary is old_standby and cluster.standby is old_primary
    assert not timings.rebuilt and timings.demoted_back is not None
    assert all(t >= 0 for t in (timings.stopped, timings.promoted, timings.demoted_back))
    # the new writer has the old data and takes writes
    with connect(cluster.primary.dsn) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(1,)]
        conn.execute("INSERT INTO kept VALUES (2)")
    # the old port serves a read-only hot standby that replicates the new writer
    assert cluster.standby.port == old_port
    assert_read_only(cluster.standby.dsn)
    cluster.wait_replicated()
    with connect(cluster.standby.dsn) as conn:
        assert conn.execute("SELECT x FROM kept ORDER BY x").fetchall() == [(1,), (2,)]

    # AND the endpoint still leads to the demoted writer until it is pointed at the new one
    stale = connect(cluster.endpoint.dsn)
    try:
        assert server_port(stale) == old_port
        assert_read_only(cluster.endpoint.dsn)
        cluster.endpoint.point_to(cluster.primary)
        with connect(cluster.endpoint.dsn) as conn:
            assert server_port(conn) == cluster.primary.port
            conn.execute("INSERT INTO kept VALUES (3)")
        assert server_port(stale) == old_port  # an open connection stays where it was opened
    finally:
        stale.close()


def test_an_old_writer_that_diverged_is_rebuilt_on_its_old_port(pg_replication):
    # GIVEN a failover where the old writer does not come back at once
    cluster = pg_replication(max_connections=20)
    cluster.primary.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
    timings = cluster.failover(demoted_returns=False)
    assert timings.demoted_back is None
    old = cluster.standby
    assert not old.running
    with pytest.raises(psycopg.OperationalError):  # the name leads to a server that is down
        connect(cluster.endpoint.dsn).close()
    # AND it took a write of its own meanwhile (split brain): its WAL forked from the new writer's
    old.start()
    old.psql("INSERT INTO t VALUES (99)")
    old.stop(keep=True)
    port = old.port

    # WHEN it rejoins
    rebuilt = cluster.rejoin_as_standby()

    # THEN it could not follow the new timeline, so it was made anew from a base backup, same port
    assert rebuilt
    assert cluster.standby is old and old.port == port
    assert old.psql("SELECT array_agg(x) FROM t") == "{1}"
    assert_read_only(old.dsn)


def test_stop_leaves_no_server_and_no_dir():
    try:
        cluster = ReplicatedPostgres(max_connections=10).start()
    except PostgresNotFound as exc:
        missing("Postgres server binaries", str(exc))
    relays = endpoint_threads()
    with cluster:
        pids = cluster.pids
        dirs = [cluster.primary.base_dir, cluster.standby.base_dir]
        endpoint = cluster.endpoint.port
        assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
    assert not any(pid_alive(pid) for pid in pids)
    assert not any(d is not None and d.exists() for d in dirs)
    assert endpoint_threads() == relays - 1
    with pytest.raises(psycopg.OperationalError):
        connect(f"postgresql://postgres@127.0.0.1:{endpoint}/postgres").close()


def test_servers_die_with_their_owner_and_the_sweep_removes_their_dirs():
    # GIVEN a process that starts a cluster and dies without stopping it
    code = (
        "import json, os; from lambdapool.tools.testing.replication import ReplicatedPostgres; "
        "c = ReplicatedPostgres(max_connections=10).start(); "
        "print(json.dumps([c.pids, [str(c.primary.base_dir), str(c.standby.base_dir)]]), flush=True); "
        "os._exit(0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if "PostgresNotFound" in out.stderr:
        missing("Postgres server binaries", out.stderr[-500:])
    pids, dirs = json.loads(out.stdout)
    assert len(pids) == 2

    # THEN both postmasters follow it (parent-death signal) and the sweep removes their dirs
    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        except FileNotFoundError:
            return True

    wait_for(lambda: all(gone(pid) for pid in pids), "the postmasters to die with their owner", timeout=15)
    sweep_orphans()  # (another test run's sweep may have removed them first)
    assert not any(os.path.exists(d) for d in dirs)


def test_settings_that_break_replication_are_refused():
    with pytest.raises(ConfigError, match="wal_level"):
        ReplicatedPostgres(settings={"wal_level": "minimal"})
    with pytest.raises(ConfigError, match="max_wal_senders"):
        ReplicatedPostgres(settings={"max_wal_senders": 1})
    with pytest.raises(ConfigError, match="hot_standby"):
        ReplicatedPostgres(settings={"hot_standby": "off"})
