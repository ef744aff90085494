"""The handlers in examples/ run as they are, against a real Postgres."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from lambdapool.tools.testing.pytest_plugin import missing
from tests.support import LambdaContext

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("example", ["lambda_psycopg", "lambda_asyncpg"])
def test_lambda_examples(pg_server, monkeypatch, example):
    monkeypatch.setenv("LAMBDAPOOL_DSN", pg_server.dsn)
    module = load(EXAMPLES / example / "handler.py", f"example_{example}")
    try:
        results = [module.handler({"n": i}, LambdaContext()) for i in range(20)]
    finally:
        module.db.close()
    assert [r["result"] for r in results] == [i + 1 for i in range(20)]
    assert len({r["backend_pid"] for r in results}) == 1
    assert [r["cold_start"] for r in results] == [True] + [False] * 19


def test_cloud_function_examples_in_process(pg_server, monkeypatch):
    try:
        import functions_framework
    except ImportError:
        missing("functions-framework", "pip install 'lambdapool[gcp]'")
    monkeypatch.setenv("LAMBDAPOOL_DSN", pg_server.dsn)
    source = str(EXAMPLES / "cloud_function" / "main.py")
    client = functions_framework.create_app("hello", source).test_client()
    first, second = client.get("/").get_json(), client.get("/").get_json()
    assert first["backend_pid"] == second["backend_pid"]
    events = functions_framework.create_app("on_event", source, "cloudevent").test_client()
    headers = {"ce-id": "evt-1", "ce-source": "test", "ce-type": "com.example.created",
               "ce-specversion": "1.0", "Content-Type": "application/json"}  # fmt: skip
    assert events.post("/", headers=headers, json={"x": 1}).status_code == 200
    assert pg_server.psql("SELECT type FROM events WHERE id = 'evt-1'") == "com.example.created"
    pg_server.psql("DROP TABLE events")
