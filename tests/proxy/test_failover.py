"""The local proxy through a failover, as RDS Proxy: multi-host backend DSNs, the writer followed,
idle clients kept, in-transaction ones told, borrows held until a writer is back, the reader role.

Real servers: a primary and a streaming hot standby (``pg_replication``) for the failovers, and
two plain servers (one made read-only with ``ALTER SYSTEM``) where a real standby is not needed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from lambdapool.errors import ConfigError
from lambdapool.testing import LocalProxy, PostgresServer, wait_for
from lambdapool.tools.proxy.config import BackendTarget
from lambdapool.tools.testing.replication import ReplicatedPostgres


def hosts_dsn(*servers: PostgresServer, attrs: str | None = "read-write") -> str:
    hosts = ",".join(f"{s.host}:{s.port}" for s in servers)
    return f"postgresql://postgres@{hosts}/postgres" + (f"?target_session_attrs={attrs}" if attrs else "")


def connect(proxy: LocalProxy, **kw: object) -> psycopg.Connection:
    return psycopg.connect(proxy.dsn, connect_timeout=10, **kw)  # type: ignore[arg-type]


def server_of(conn: psycopg.Connection) -> tuple[int, bool]:
    """(port, in recovery) of the server this transaction runs on."""
    row = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def set_read_only(server: PostgresServer, on: bool) -> None:
    """Make a plain server read-only (or writable) for new and, at their next statement, existing sessions."""
    server.psql(
        "ALTER SYSTEM SET default_transaction_read_only = on"
        if on
        else "ALTER SYSTEM RESET default_transaction_read_only"
    )
    server.psql("SELECT pg_reload_conf()")


@pytest.fixture
def cluster(pg_replication) -> ReplicatedPostgres:
    cluster = pg_replication(max_connections=30)
    cluster.primary.psql("CREATE TABLE IF NOT EXISTS t (id int)")
    cluster.wait_replicated()
    return cluster


@pytest.fixture(scope="module")
def two_servers(pg_session_factory) -> tuple[PostgresServer, PostgresServer]:
    """Two unrelated servers for what needs no replication; each test starts with both writable."""
    return pg_session_factory(max_connections=30), pg_session_factory(max_connections=30)


@pytest.fixture
def servers(two_servers) -> Iterator[tuple[PostgresServer, PostgresServer]]:
    for server in two_servers:
        set_read_only(server, False)
        server.psql("CREATE TABLE IF NOT EXISTS t (id int)")
    yield two_servers
    for server in two_servers:
        set_read_only(server, False)


# -- following the writer through a real failover ----------------------------------------------
def test_follows_a_promoted_standby_and_keeps_idle_clients(cluster):
    old, new = cluster.primary, cluster.standby
    with LocalProxy(hosts_dsn(old, new), max_backends=4, borrow_timeout=30) as proxy:
        client = connect(proxy, autocommit=True)
        client.execute("INSERT INTO t VALUES (1)")
        assert server_of(client) == (old.port, False)
        assert proxy.stats()["server"] == f"{old.host}:{old.port}"

        cluster.failover(demoted_returns=True)  # the old writer is back on its port, as a standby

        # the same client connection, never reconnected: its next transaction is on the new writer
        client.execute("INSERT INTO t VALUES (2)")
        assert server_of(client) == (new.port, False)
        assert client.execute("SELECT count(*) FROM t").fetchone() == (2,)
        stats = proxy.stats()
        assert stats["failovers"] == 1 and stats["writer_changes"] == 1, stats
        assert stats["server"] == f"{new.host}:{new.port}" and stats["clients"] == 1
        client.close()


def test_a_client_mid_transaction_gets_an_error_and_its_next_transaction_works(cluster):
    old, new = cluster.primary, cluster.standby
    with LocalProxy(hosts_dsn(old, new), max_backends=4, borrow_timeout=30) as proxy:
        idle = connect(proxy, autocommit=True)
        busy = connect(proxy)
        busy.execute("INSERT INTO t VALUES (1)")  # a transaction left open on the old writer

        cluster.failover(demoted_returns=True)

        with pytest.raises(psycopg.OperationalError) as lost:
            busy.execute("INSERT INTO t VALUES (2)")
        # The old writer's fast shutdown ends its sessions with 57P01, which the proxy relays; a
        # writer that vanishes without a word gets the proxy's 08006 (see the next test).
        assert lost.value.sqlstate in ("57P01", "08006"), lost.value
        assert busy.broken or busy.closed
        busy.close()
        retry = connect(proxy)  # the client's next transaction, on a new connection, as a driver retries
        retry.execute("INSERT INTO t VALUES (3)")
        retry.commit()
        assert server_of(retry) == (new.port, False)
        assert idle.execute("SELECT array_agg(id) FROM t").fetchone() == ([3],)  # the open one was lost
        retry.close()
        idle.close()


def test_borrows_in_the_no_writer_window_wait_and_go_to_the_promoted_standby(cluster):
    old, new = cluster.primary, cluster.standby
    with LocalProxy(hosts_dsn(old, new), max_backends=4, borrow_timeout=30) as proxy:
        client = connect(proxy, autocommit=True)
        assert server_of(client) == (old.port, False)
        old.stop(keep=True)  # the writer is gone; the standby is not promoted yet
        wait_for(lambda: proxy.stats()["backends_idle"] == 0, "the proxy to see the old writer's backends end")

        result: dict[str, object] = {}

        def borrow() -> None:
            try:
                result["server"] = server_of(client)
            except Exception as exc:  # reported by the main thread
                result["error"] = exc

        waiter = threading.Thread(target=borrow)
        waiter.start()
        wait_for(lambda: proxy.stats()["waiting"] == 1, "the borrow to wait for a writer")
        wait_for(lambda: proxy.stats()["failovers"] == 1, "the proxy to find the writer gone")
        assert waiter.is_alive()  # no writer: it waits (the standby answers, as a standby)

        assert new.psql("SELECT pg_promote(true, 30)") == "t"
        waiter.join(30)
        assert result == {"server": (new.port, False)}
        client.execute("INSERT INTO t VALUES (1)")
        stats = proxy.stats()
        assert stats["writer_changes"] == 1 and stats["borrow_timeouts"] == 0, stats
        client.close()


def test_a_borrow_timeout_shorter_than_the_outage_gives_53300(cluster):
    old, standby = cluster.primary, cluster.standby
    with LocalProxy(hosts_dsn(old, standby), max_backends=4, borrow_timeout=0.5) as proxy:
        client = connect(proxy, autocommit=True)
        old.stop(keep=True)
        wait_for(lambda: proxy.stats()["backends_idle"] == 0, "the proxy to see the old writer's backends end")
        began = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as timed_out:
            client.execute("SELECT 1")
        assert 0.4 < time.monotonic() - began < 5
        assert timed_out.value.sqlstate == "53300"
        message = str(timed_out.value)
        assert message.startswith("Timed-out waiting to acquire database connection.")
        assert "no server of" in message and "is a hot standby" in message, message
        assert proxy.stats()["borrow_timeouts"] == 1
        assert not client.closed  # an ERROR, as today: the connection stays usable
        client.close()


# -- a server turning read-only, and the explicit switch --------------------------------------
def test_a_writer_turning_read_only_fails_one_write_then_borrows_go_to_the_new_writer(servers):
    a, b = servers
    set_read_only(b, True)
    with LocalProxy(hosts_dsn(a, b), max_backends=4) as proxy:
        clients = [connect(proxy, autocommit=True) for _ in range(3)]
        for conn in clients:  # three backends on a, one per client, all idle in the pool after
            conn.execute("BEGIN")
        for conn in clients:
            conn.execute("COMMIT")
        assert proxy.stats()["backends_idle"] == 3

        set_read_only(a, True)  # a Blue/Green switchover: the writer turns read-only, the other takes over
        set_read_only(b, False)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            clients[0].execute("INSERT INTO t VALUES (1)")  # the server's own 25006, on a's backend
        # its server said it is read-only now: a's other idle backends are closed with it
        assert proxy.stats()["failovers"] == 1
        for conn in clients:
            conn.execute("INSERT INTO t VALUES (2)")
            assert server_of(conn) == (b.port, False)
        stats = proxy.stats()
        assert stats["writer_changes"] == 1 and stats["server"] == f"{b.host}:{b.port}", stats
        for conn in clients:
            conn.close()


def test_a_read_only_transaction_refusing_a_write_is_no_failover(servers):
    a, b = servers
    with LocalProxy(hosts_dsn(a, b), max_backends=2) as proxy:
        conn = connect(proxy)
        conn.execute("SET TRANSACTION READ ONLY")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO t VALUES (1)")
        conn.rollback()
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        assert server_of(conn)[0] == a.port
        stats = proxy.stats()
        assert stats["failovers"] == 0 and stats["writer_changes"] == 0, stats
        conn.close()


def test_failover_call_switches_the_target_keeping_idle_clients(servers):
    a, b = servers
    with LocalProxy(hosts_dsn(a, attrs=None), max_backends=4) as proxy:
        busy = connect(proxy)
        busy.execute("INSERT INTO t VALUES (1)")  # in a transaction on a
        idle = connect(proxy, autocommit=True)
        assert server_of(idle)[0] == a.port  # on a second backend
        wait_for(lambda: a.backends() == 2, "both backends on a")

        proxy.failover(hosts_dsn(b, attrs=None))

        wait_for(lambda: a.backends() == 0, "the proxy to close every backend on the old target")
        assert server_of(idle)[0] == b.port  # the idle client kept its connection
        with pytest.raises(psycopg.OperationalError) as cut:
            busy.execute("SELECT 1")
        assert cut.value.sqlstate == "08006" and "failover()" in str(cut.value), cut.value
        busy.close()
        with connect(proxy) as retry:
            assert server_of(retry)[0] == b.port
        stats = proxy.stats()
        assert stats["failovers"] == 1 and stats["writer_changes"] == 1, stats
        assert stats["server"] == f"{b.host}:{b.port}"
        idle.close()


def test_failover_call_refuses_another_database_or_role(servers):
    a, b = servers
    with LocalProxy(hosts_dsn(a), max_backends=2) as proxy:
        with pytest.raises(ConfigError, match="database 'other'"):
            proxy.failover(f"postgresql://postgres@{b.host}:{b.port}/other")
        with pytest.raises(ConfigError, match="role='reader'"):
            proxy.failover(hosts_dsn(b, attrs="standby"))
        assert proxy.stats()["failovers"] == 0
        with connect(proxy) as conn:
            assert server_of(conn)[0] == a.port


def test_a_unix_socket_host_in_a_keyword_dsn(servers):
    a, b = servers
    dsn = f"host={a.base_dir},{b.host} port={a.port},{b.port} user=postgres dbname=postgres"
    with LocalProxy(dsn, max_backends=2) as proxy, connect(proxy) as conn:
        row = conn.execute("SELECT current_setting('port')::int, inet_server_addr()").fetchone()
        assert row == (a.port, None)  # a's, over its socket
        assert proxy.stats()["server"] == f"{a.base_dir}:{a.port}"


# -- the reader endpoint ---------------------------------------------------------------------
def test_reader_routes_to_the_standby(cluster):
    primary, standby = cluster.primary, cluster.standby
    with LocalProxy(hosts_dsn(primary, standby, attrs=None), role="reader", max_backends=2) as proxy:
        with connect(proxy, autocommit=True) as conn:
            assert conn.info.parameter_status("in_hot_standby") == "on"
            assert server_of(conn) == (standby.port, True)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):  # a reader refusing a write is no failover
                conn.execute("INSERT INTO t VALUES (1)")
            assert server_of(conn) == (standby.port, True)
        stats = proxy.stats()
        assert stats["failovers"] == 0 and stats["server"] == f"{standby.host}:{standby.port}", stats


def test_reader_without_a_standby_fails_a_borrow_at_once(servers):
    a, b = servers
    with LocalProxy(hosts_dsn(a, b, attrs=None), role="reader", borrow_timeout=60) as proxy:
        conn = connect(proxy, autocommit=True)
        began = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as none:
            conn.execute("SELECT 1")
        assert time.monotonic() - began < 5  # at once, not after borrow_timeout
        assert none.value.sqlstate == "08001"
        assert f"{a.host}:{a.port} is a read-write server" in str(none.value), none.value
        assert "is a hot standby" in str(none.value)  # what it looked for
        assert not conn.closed
        conn.close()


def test_prefer_standby_takes_a_writer_when_there_is_no_standby(servers):
    a, b = servers
    with LocalProxy(hosts_dsn(a, b, attrs="prefer-standby"), role="reader") as proxy, connect(proxy) as conn:
        assert server_of(conn)[0] == a.port


# -- the CLI ---------------------------------------------------------------------------------
def test_cli_reader_with_a_multi_host_backend(cluster):
    from lambdapool.testing import free_port
    from tests.proxy.test_cli import read_banner, start_cli

    primary, standby = cluster.primary, cluster.standby
    port = free_port()
    proc = start_cli("--backend", hosts_dsn(primary, standby, attrs=None), "--reader",
                     "--listen", f"127.0.0.1:{port}", "--status-interval", "0")  # fmt: skip
    try:
        banner = read_banner(proc)
        assert f"{primary.port},{standby.host}:{standby.port}/postgres" in banner and "role=reader" in banner
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=10) as conn:
            assert server_of(conn) == (standby.port, True)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def test_cli_port_count_mismatch_exits_2(capsys):
    from lambdapool.tools.cli import main

    assert main(["proxy", "--backend", "host=h1,h2,h3 port=5432,5433 dbname=db", "--reader"]) == 2
    assert "3 hosts (h1, h2, h3) but 2 ports" in capsys.readouterr().err


# -- parsing the backend DSN (no servers) ----------------------------------------------------
def test_multi_host_uri_and_keyword_forms():
    uri = BackendTarget.from_dsn("postgresql://app:s%40cret@h1:5433,[::1]:5434,h3/db?target_session_attrs=read-write")
    assert uri.hosts == (("h1", 5433), ("::1", 5434), ("h3", 5432))
    assert (uri.user, uri.password, uri.database, uri.target_session_attrs) == ("app", "s@cret", "db", "read-write")
    assert uri.describe() == "h1:5433,[::1]:5434,h3:5432/db" and "s@cret" not in repr(uri)

    keywords = BackendTarget.from_dsn("host=h1,h2 port=6000 user=app password='it\\'s a \\\\ pw' dbname = db")
    assert keywords.hosts == (("h1", 6000), ("h2", 6000))  # one port for every host
    assert (keywords.user, keywords.database, keywords.password) == ("app", "db", "it's a \\ pw")

    pairs = BackendTarget.from_dsn("host=h1,h2 port=1,2 target_session_attrs=standby sslmode=require")
    assert pairs.hosts == (("h1", 1), ("h2", 2)) and pairs.target_session_attrs == "standby" and pairs.tls
    query = BackendTarget.from_dsn("postgresql://u@ignored/db?host=a,b&port=7")
    assert query.hosts == (("a", 7), ("b", 7))
    single = BackendTarget.from_dsn("postgresql://postgres:pw@127.0.0.1:5432/postgres")
    assert (single.host, single.port, single.sslmode, single.target_session_attrs) == (
        "127.0.0.1",
        5432,
        "disable",
        None,
    )


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        ("host=h1,h2,h3 port=1,2", "3 hosts (h1, h2, h3) but 2 ports (1, 2)"),
        ("postgresql://u@h1,h2/db?port=1,2,3", "2 hosts (h1, h2) but 3 ports"),
        ("host=h1,,h3", "an empty host"),
        ("host=h1 port=x", "port 'x'"),
        ("postgresql://u@h1/db?target_session_attrs=writer", "target_session_attrs='writer'"),
        ("mysql://u@h1/db", "scheme 'mysql'"),
        ("host=h1 password='unterminated", "no closing quote"),
        ("just-a-name", "key=value"),
    ],
)
def test_bad_backend_dsns_are_config_errors(dsn, says):
    with pytest.raises(ConfigError, match="backend: ") as bad:
        LocalProxy(dsn)
    assert says in str(bad.value)


def test_a_role_the_dsn_contradicts_is_a_config_error():
    with pytest.raises(ConfigError, match="role='reader'"):
        LocalProxy("postgresql://u:secret@h1,h2/db?target_session_attrs=standby")
    with pytest.raises(ConfigError, match="role='writer'") as bad:
        LocalProxy("postgresql://u:secret@h1,h2/db?target_session_attrs=read-write", role="reader")
    assert "secret" not in str(bad.value)
    with pytest.raises(ConfigError, match="role: must be"):
        LocalProxy("postgresql://u@h1/db", role="replica")
    assert LocalProxy("postgresql://u@h1,h2/db?target_session_attrs=any").settings.wanted == "any"
    assert LocalProxy("postgresql://u@h1,h2/db", role="reader").settings.wanted == "standby"
    assert LocalProxy("postgresql://u@h1,h2/db").settings.wanted == "read-write"


# -- what marks a backend for a second look (no I/O) ------------------------------------------
def test_a_role_parameter_or_a_25006_marks_the_backend_and_nothing_else_does():
    from lambdapool.tools.proto import messages as m
    from lambdapool.tools.proxy import roles
    from lambdapool.tools.proxy.backend_state import BackendState

    state = BackendState({"in_hot_standby": "off", "default_transaction_read_only": "off"})
    state.expect.append(("Q", None))
    ordinary = [m.command_complete("INSERT 0 1"), m.parameter_status("application_name", "x"), m.ready_for_query("I")]
    state.relay([(f[0:1].decode(), f) for f in ordinary], [], None)
    assert not state.recheck and not state.read_only_error

    state.expect.append(("Q", None))
    refused = [m.error_response("25006", "cannot execute INSERT in a read-only transaction"), m.ready_for_query("I")]
    state.relay([(f[0:1].decode(), f) for f in refused], [], None)
    assert state.recheck and state.read_only_error
    assert roles.fits("read-write", state.params) and roles.reports_role(state.params)  # a READ ONLY transaction

    state = BackendState({"in_hot_standby": "off", "default_transaction_read_only": "off"})
    state.relay([("S", m.parameter_status("default_transaction_read_only", "on"))], [], None)  # a reload, reported
    assert state.recheck and not state.read_only_error
    assert not roles.fits("read-write", state.params) and roles.fits("primary", state.params)
    assert roles.fits("read-only", state.params) and not roles.fits("standby", state.params)
