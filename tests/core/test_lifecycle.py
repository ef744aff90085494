"""Shutdown, SnapStart, metrics and what db.invocation reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import lambdapool
from lambdapool import _lifecycle as lifecycle
from lambdapool.testing import wait_for
from tests.support import LambdaContext, backends, query_handler

SIGTERM_SCRIPT = textwrap.dedent(
    """
    import signal, sys, time, lambdapool
    chained = "{chain}" == "yes"
    if chained:
        signal.signal(signal.SIGTERM, lambda s, f: (print("previous handler ran", flush=True), sys.exit(7)))
    db = lambdapool.Database(sys.argv[1], application_name="lp-sigterm")
    with db.connection() as conn:
        conn.execute("SELECT 1")
    print("ready", flush=True)
    time.sleep(30)
    """
)


@pytest.mark.parametrize("chain", ["yes", "no"])
def test_sigterm_closes_the_connection_and_chains_the_previous_handler(pg_server, tmp_path, chain):
    script = tmp_path / "fn.py"
    script.write_text(SIGTERM_SCRIPT.replace("{chain}", chain))
    proc = subprocess.Popen([sys.executable, str(script), pg_server.dsn], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert backends(pg_server, "lp-sigterm") == 1
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    if chain == "yes":
        assert "previous handler ran" in out and proc.returncode == 7
    else:
        assert proc.returncode == -signal.SIGTERM  # default action, as without us
    wait_for(lambda: not backends(pg_server, "lp-sigterm"), "the SIGTERMed instance's backend gone", timeout=5)
    assert backends(pg_server, "lp-sigterm") == 0


def test_snapstart_hooks_close_before_snapshot_and_restore_counts_cold(pg_server, make_db):
    db = make_db(pg_server.dsn, application_name="lp-snap")
    handler = query_handler(db)
    handler({}, LambdaContext())
    handler({}, LambdaContext())
    assert backends(pg_server, "lp-snap") == 1
    lifecycle.hooks()["before_snapshot"]()
    assert db.stats()["open_connections"] == 0 and backends(pg_server, "lp-snap") == 0
    lifecycle.hooks()["after_restore"]()

    @db.lambda_handler
    def probe(event, context):
        return db.invocation.cold_start, db.invocation.init_type

    assert probe({}, LambdaContext()) == (True, "snap-start")
    assert db.stats()["open_connections"] == 0  # lazily: nothing reconnects until asked


def test_emf_line_per_invocation_when_asked(pg_server, make_db, capsys):
    db = make_db(pg_server.dsn, emit_metrics=True)
    handler = query_handler(db)
    handler({}, LambdaContext())
    handler({}, LambdaContext())
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 2
    first, second = lines
    names = {m["Name"] for m in first["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert {"ColdStart", "Connects", "AcquireMs"} <= names
    assert first["ColdStart"] == 1 and first["Connects"] == 1
    assert second["ColdStart"] == 0 and second["Connects"] == 0


def test_no_metrics_line_by_default(pg_server, make_db, capsys):
    query_handler(make_db(pg_server.dsn))({}, LambdaContext())
    assert capsys.readouterr().out == ""


def test_invocation_reports_platform_init_type_and_remaining_time(monkeypatch):
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "orders")
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "provisioned-concurrency")
    db = lambdapool.Database("postgresql://u@h/db")
    seen = {}

    @db.lambda_handler
    def handler(event, context):
        inv = db.invocation
        seen.update(platform=inv.platform, init=inv.init_type, remaining=inv.remaining_time, rid=inv.request_id)

    ctx = LambdaContext(remaining_ms=2000)
    handler({}, ctx)
    assert seen["platform"] == "aws-lambda" and seen["init"] == "provisioned-concurrency"
    assert 1.5 < seen["remaining"] <= 2.0 and seen["rid"] == ctx.aws_request_id
    assert db.adapter.application_name == "lambdapool:orders"


def test_remaining_time_off_lambda_comes_from_invocation_timeout(monkeypatch):
    for var in ("AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_RUNTIME_API"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("K_SERVICE", "orders-fn")
    db = lambdapool.Database("postgresql://u@h/db", invocation_timeout=7)
    seen = {}

    @db.cloud_function
    def fn(request):
        seen.update(platform=db.invocation.platform, remaining=db.invocation.remaining_time)

    fn(None)
    assert seen["platform"] == "gcp-functions" and 6.5 < seen["remaining"] <= 7


def test_import_costs_no_driver_even_after_building_a_database():
    code = (
        "import sys, lambdapool; db = lambdapool.Database('postgresql://u@h/db', driver='asyncpg', pooler='direct');"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncpg','psycopg','boto3','botocore')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
