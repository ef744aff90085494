"""`lambdapool emulate` shows what failed (type, message, the first traceback), exits non-zero on a
failure the database's limit does not explain, and runs Cloud Functions: through the CLI's
``main`` as a user calls it, real awslambdaric environments, real functions-framework servers, the
session's Postgres (``--dsn``, so no throwaway cluster per test)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from lambdapool.tools.cli import main
from tests.emulator.conftest import need
from tests.support import need_cli_parts

LAMBDA_TYPO = """
import lambdapool

db = lambdapool.Database.from_env(driver="psycopg")


@db.lambda_handler
def handler(event, context):
    with db.connection() as conn:
        conn.execute("SELEC 1")
    return "unreachable"
"""

CLOUD_FUNCTIONS = """
import lambdapool

db = lambdapool.Database.from_env(driver="psycopg")


@db.cloud_function
def fn(request):
    with db.connection() as conn:
        (n,) = conn.execute("SELECT %s::int * 2", (request.get_json()["n"],)).fetchone()
    return {"twice": n}


@db.cloud_function
def on_event(cloud_event):
    with db.connection() as conn:
        conn.execute("SELECT 1")
    return cloud_event.data["order_id"]  # the emulator's events carry none
"""

RAISES_AT_IMPORT = """
import lambdapool

db = lambdapool.Database.from_env(driver="psycopg", acquire_timeout=0)


@db.lambda_handler
def handler(event, context):
    return "unreachable"


@db.cloud_function
def fn(request):
    return "unreachable"
"""


def write(tmp_path: Path, source: str) -> Path:
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(source))
    return app


def emulate(capsys, pg_server, tmp_path, handler: str, *args: str) -> tuple[int, str, str, dict]:
    figures = tmp_path / "out.json"
    common = ["--dsn", pg_server.dsn, "--pooler", "direct", "--concurrency", "2", "--invocations", "4"]
    code = main(["emulate", handler, *common, "--json", str(figures), *args])
    out, err = capsys.readouterr()
    doc = json.loads(figures.read_text()) if figures.exists() else {}
    return code, out, err, doc


def line_of(app: Path, text: str) -> int:
    return next(n for n, line in enumerate(app.read_text().splitlines(), 1) if text in line)


def test_a_handler_that_raises_shows_its_error_and_exits_1(capsys, pg_server, tmp_path, monkeypatch):
    # Before: "failed 4" in the table, exit status 0, and --json kept {"SyntaxError": 4}.
    need_cli_parts()
    app = write(tmp_path, LAMBDA_TYPO)
    monkeypatch.chdir(tmp_path)  # Lambda's own handler string, from the task root
    code, out, err, doc = emulate(capsys, pg_server, tmp_path, "app.handler")
    assert code == 1, err
    assert "1 distinct error" in out and "SyntaxError: 4 invocations" in out
    assert 'syntax error at or near "SELEC"' in out
    # the traceback of the first occurrence, from the handler's own frame on
    trace = out[out.index("Traceback (most recent call last):") :]
    first_frame = trace.splitlines()[1].strip()
    assert first_frame == f'File "{app}", line {line_of(app, "SELEC")}, in handler', trace
    assert "awslambdaric" not in trace and "lambdapool/_handlers.py" not in trace
    assert "--allow-failures" in err and "4 of 4 invocations failed" in err
    # --json carries the message and the traceback, not only a count
    (error,) = doc["scenarios"]["direct"]["errors"]
    assert error["type"] == "SyntaxError" and error["count"] == 4 and "SELEC" in error["message"]
    assert f'File "{app}"' in error["traceback"] and error["first"]["cold"]
    assert doc["scenarios"]["direct"]["summary"]["errors"] == {"SyntaxError": 4}


@pytest.mark.parametrize("platform", ["aws", "gcp"])
def test_a_module_that_raises_at_import_shows_the_init_error(capsys, pg_server, tmp_path, platform):
    need_cli_parts()
    if platform == "gcp":
        need("functions_framework")
    app = write(tmp_path, RAISES_AT_IMPORT)
    function = "handler" if platform == "aws" else "fn"
    code, out, err, doc = emulate(capsys, pg_server, tmp_path, f"{app}:{function}", "--platform", platform)
    assert code == 1, err
    assert "ConfigError: 4 invocations" in out and "acquire_timeout must be more than 0 seconds" in out, out
    assert "(init failed)" in out
    assert f'File "{app}", line {line_of(app, "acquire_timeout=0")}, in <module>' in out, out
    (error,) = doc["scenarios"]["direct"]["errors"]
    assert error["first"]["init_failed"] and "in <module>" in error["traceback"]


def test_cloud_functions_run_on_functions_framework_told_from_their_signature(capsys, pg_server, tmp_path):
    # Before: emulate ran only Lambda handlers ("(request)" failed every invocation with a TypeError).
    need_cli_parts()
    need("functions_framework")
    app = write(tmp_path, CLOUD_FUNCTIONS)
    code, out, err, doc = emulate(capsys, pg_server, tmp_path, f"{app}:fn", "--max-concurrency", "2")
    assert code == 0, err + out
    assert "fn: a Cloud Function (fn(request) takes one parameter), run as HTTP" in err
    assert "4 invocations over 1 Cloud Functions instances x 2 concurrent requests" in err
    summary = doc["scenarios"]["direct"]["summary"]
    assert (summary["invocations"], summary["failures"], summary["instances"]) == (4, 0, 1), summary
    assert summary["connects"] >= 1 and doc["scenarios"]["direct"]["errors"] == []


def test_a_cloudevent_function_that_raises_shows_its_error(capsys, pg_server, tmp_path):
    need_cli_parts()
    need("functions_framework")
    app = write(tmp_path, CLOUD_FUNCTIONS)
    code, out, err, doc = emulate(capsys, pg_server, tmp_path, f"{app}:on_event", "--allow-failures")
    assert code == 0, err  # failures accepted, and still shown
    assert "on_event: a Cloud Function (on_event(cloud_event) takes one parameter), run as CloudEvent" in err
    assert "KeyError: 4 invocations" in out and "'order_id'" in out, out
    assert f'File "{app}", line {line_of(app, "order_id")}, in on_event' in out, out
    assert "flask" not in out and "functions_framework" not in out  # the handler's own frames
    assert doc["scenarios"]["direct"]["summary"]["connects"] >= 1


@pytest.mark.parametrize(
    "handler, message",
    [
        ("app.fn --platform aws", "--platform aws: app.py:fn is a Cloud Function (fn(request) takes one parameter)"),
        ("app.hander", "app.py defines no top-level 'hander'; did you mean app.handler?"),
        ("ap.handler", "no such file 'ap.py'; did you mean app.handler?"),
        (
            "app:handler",
            "'app' is not a .py file (expected path/to/app.py:handler or Lambda's app.handler); "
            "did you mean app.py:handler?",
        ),
        (
            "app.py",
            "name the function too (expected path/to/app.py:handler or Lambda's app.handler); "
            "did you mean app.py:handler?",
        ),
    ],
)
def test_a_handler_that_does_not_resolve_says_what_would(capsys, tmp_path, monkeypatch, handler, message):
    (tmp_path / "app.py").write_text("def handler(event, context):\n    pass\n\n\ndef fn(request):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    code = main(["emulate", *handler.split()])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_light_instances_report_the_handlers_traceback(light_fleet, tmp_path):
    app = write(tmp_path, "def handler(event, context):\n    return event['missing']\n")
    fleet = light_fleet(f"{app}:handler")
    (result,) = fleet.burst([{}], concurrency=1)
    assert (result.ok, result.error_type, result.error_message) == (False, "KeyError", "'missing'")
    # from the handler's frame (not the fleet's), as Python prints it (3.11+ adds a line of carets)
    trace = result.error_trace.splitlines()
    assert (
        trace[:3]
        == ["Traceback (most recent call last):", f'  File "{app}", line 2, in handler', "    return event['missing']"]
        and len(trace) <= 4
    ), trace
