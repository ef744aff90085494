"""infra/pgbouncer/pgbouncer.ini with the plan's numbers, on a real PgBouncer and Postgres:
a burst wider than the pool is served without the database seeing more backends than planned,
and PgBouncer turns away clients past the planned fan-out."""

from __future__ import annotations

import threading

import psycopg
import pytest

from lambdapool.tools.cli import main
from lambdapool.tools.emulator import BackendSampler
from lambdapool.tools.testing.pgbouncer import PgBouncer, PgBouncerNotFound
from lambdapool.tools.testing.pytest_plugin import missing
from tests.infra.infra_support import ROOT

TEMPLATE = ROOT / "infra" / "pgbouncer" / "pgbouncer.ini"
# Site-specific lines (addresses, files, users, TLS material) stay the launcher's; the rest of
# the template's [pgbouncer] section (pool mode, timeouts) runs as shipped.
SITE_SPECIFIC = {
    "listen_addr",
    "listen_port",
    "unix_socket_dir",
    "auth_type",
    "auth_file",
    "admin_users",
    "stats_users",
    "client_tls_sslmode",
    "client_tls_key_file",
    "client_tls_cert_file",
    "server_tls_sslmode",
    "logfile",
    "pidfile",
}


def ini_settings(text: str, section: str = "pgbouncer") -> dict[str, str]:
    """``key = value`` lines of one section (``;`` comments and ``%include`` skipped)."""
    out, current = {}, None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and line and not line.startswith((";", "%")) and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_template_includes_the_budget_file():
    text = TEMPLATE.read_text()
    assert text.rstrip().endswith("%include /etc/pgbouncer/budget.ini")
    assert ini_settings(text)["pool_mode"] == "transaction"
    assert not {"default_pool_size", "max_db_connections", "max_client_conn"} & set(ini_settings(text))


def test_planned_pgbouncer_caps_backends_and_clients(pg_factory, capsys):
    # GIVEN a database with max_connections 20 and a function fanning out to 24 instances
    pg = pg_factory(max_connections=20, password="pw")
    assert (
        main(
            [
                "plan",
                "--max-connections",
                "20",
                "--admin",
                "2",
                "--function",
                "api=24",
                "--pooler",
                "pgbouncer",
                "--format",
                "pgbouncer",
            ]
        )
        == 0
    )
    budget = ini_settings("[pgbouncer]\n" + capsys.readouterr().out)
    assert budget == {
        "default_pool_size": "15",
        "max_db_connections": "15",
        "max_client_conn": "24",
        "reserve_pool_size": "0",
    }
    settings = {k: v for k, v in ini_settings(TEMPLATE.read_text()).items() if k not in SITE_SPECIFIC}
    pool_mode = settings.pop("pool_mode")
    try:
        bouncer = PgBouncer(
            pg,
            pool_mode=pool_mode,
            default_pool_size=int(budget["default_pool_size"]),
            max_client_conn=int(budget["max_client_conn"]),
            max_db_connections=int(budget["max_db_connections"]),
            extra={**settings, "reserve_pool_size": budget["reserve_pool_size"]},
        )
        bouncer.start()
    except PgBouncerNotFound as exc:
        missing("PgBouncer", str(exc))
    try:
        config = {row["key"]: row["value"] for row in bouncer.show("CONFIG")}
        assert config["query_wait_timeout"] == settings["query_wait_timeout"]
        # WHEN all 24 instances run a transaction at once
        errors: list[Exception] = []
        barrier = threading.Barrier(24, timeout=10)

        def instance() -> None:
            try:
                with psycopg.connect(bouncer.dsn, prepare_threshold=None, connect_timeout=5) as conn:
                    barrier.wait()
                    conn.execute("SELECT pg_sleep(0.2)")
            except Exception as exc:
                errors.append(exc)

        with BackendSampler(pg.dsn, interval=0.005) as sampler:
            threads = [threading.Thread(target=instance) for _ in range(24)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
        # THEN every instance is served, and the database never holds more than 15 of them
        assert errors == []
        assert 1 <= sampler.peak <= 15, sampler.peak
        # AND a 25th client at once is more than the plan allowed: PgBouncer refuses it
        held = [psycopg.connect(bouncer.dsn, prepare_threshold=None) for _ in range(24)]
        try:
            with pytest.raises(psycopg.OperationalError, match="max_client_conn"):
                psycopg.connect(bouncer.dsn, prepare_threshold=None, connect_timeout=5)
        finally:
            for conn in held:
                conn.close()
    finally:
        bouncer.stop()
