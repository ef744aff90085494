"""Per-invocation figures: namespace and dimensions, and one blob beside Powertools Metrics."""

from __future__ import annotations

import json

import pytest

from tests.support import LambdaContext, query_handler


def emf_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]


def test_namespace_and_dimensions_follow_powertools_environment(pg_server, make_db, capsys, monkeypatch):
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Shop")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "orders")
    query_handler(make_db(pg_server.dsn, emit_metrics=True))({}, LambdaContext())
    (line,) = emf_lines(capsys.readouterr().out)
    directive = line["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "Shop" and directive["Dimensions"] == [["service"]]
    assert line["service"] == "orders"


def test_namespace_and_dimensions_as_settings(pg_server, make_db, capsys, monkeypatch):
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Shop")
    db = make_db(pg_server.dsn, emit_metrics=True, metrics_namespace="Db", metrics_dimensions={"stage": "prod"})
    query_handler(db)({}, LambdaContext())
    (line,) = emf_lines(capsys.readouterr().out)
    assert line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Db" and line["stage"] == "prod"


def test_beside_powertools_one_blob_and_one_cold_start(pg_server, make_db, capsys, monkeypatch):
    # Before: Powertools wrote its blob, lambdapool its own, and ColdStart was counted in both.
    try:
        from aws_lambda_powertools import Metrics
    except ImportError:
        from lambdapool.tools.testing.pytest_plugin import missing

        missing("aws-lambda-powertools", "pip install aws-lambda-powertools")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Shop")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "orders")
    metrics = Metrics()
    db = make_db(pg_server.dsn)
    db.add_metrics_to(metrics)

    @metrics.log_metrics(capture_cold_start_metric=True)  # outermost: flushes after lambdapool adds
    @db.lambda_handler
    def handler(event, context):
        with db.connection() as conn:
            return conn.execute("SELECT 1").fetchone()[0]

    context = LambdaContext()
    context.function_name = "orders-fn"
    handler({}, context)
    handler({}, context)
    blobs = emf_lines(capsys.readouterr().out)
    value = lambda b, k: b[k][0] if isinstance(b[k], list) else b[k]  # noqa: E731 (Powertools lists values)
    cold = [b for b in blobs if "ColdStart" in b]
    assert len(cold) == 1 and value(cold[0], "ColdStart") == 1  # Powertools' own, once
    main = [b for b in blobs if "Connects" in b]
    assert len(main) == 2, blobs  # Powertools' one blob per invocation holds lambdapool's figures
    assert len(blobs) == 3  # and lambdapool wrote none of its own
    assert {b["_aws"]["CloudWatchMetrics"][0]["Namespace"] for b in main} == {"Shop"}
    assert [value(b, "Connects") for b in main] == [1, 0]
    assert all("ColdStart" not in b for b in main)


def test_add_metrics_to_wants_a_metrics_object(pg_server, make_db):
    import lambdapool

    with pytest.raises(lambdapool.ConfigError, match="Powertools Metrics"):
        make_db(pg_server.dsn).add_metrics_to(object())
