"""`lambdapool emulate --setup FILE.sql` and the throwaway role's own schema, through the CLI
as a user runs it (a fresh `python -m lambdapool` process), on Managed Instances environments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import need_cli_parts

HANDLER = """
import lambdapool

db = lambdapool.Database.from_env(driver="psycopg")


@db.lambda_handler
def handler(event, context):
    with db.connection() as conn:
        # DDL from the handler: its own table, in the role's own schema (serialised: concurrent
        # CREATE TABLE IF NOT EXISTS may collide in Postgres's catalog)
        conn.execute("SELECT pg_advisory_xact_lock(13)")
        conn.execute("CREATE TABLE IF NOT EXISTS visits (request_id text PRIMARY KEY, color text NOT NULL)")
        (color,) = conn.execute("SELECT color FROM public.colors WHERE n = %s", (event["n"] % 3,)).fetchone()
        conn.execute("INSERT INTO visits VALUES (%s, %s)", (context.aws_request_id, color))
        (count,) = conn.execute("SELECT count(*) FROM visits").fetchone()
        (schema,) = conn.execute("SELECT current_schema()").fetchone()
    return {"visits": count, "schema": schema}
"""

SETUP = """
CREATE TABLE public.colors (n int PRIMARY KEY, color text NOT NULL);
INSERT INTO public.colors VALUES (0, 'red'), (1, 'green'), (2, 'blue');
GRANT SELECT ON public.colors TO app;
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    need_cli_parts()
    (tmp_path / "app.py").write_text(HANDLER)
    (tmp_path / "setup.sql").write_text(SETUP)
    return tmp_path


def emulate(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "lambdapool",
        "emulate",
        f"{project / 'app.py'}:handler",
        "--pooler",
        "direct",
        "--max-concurrency",
        "3",
        "--concurrency",
        "6",
        "--invocations",
        "18",
        "--max-connections",
        "20",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=project,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def test_setup_runs_as_the_owner_and_the_handler_creates_and_uses_its_table(project):
    out = emulate(project, "--setup", str(project / "setup.sql"), "--json", str(project / "out.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((project / "out.json").read_text())["scenarios"]["direct"]["summary"]
    assert (summary["invocations"], summary["failures"], summary["errors"]) == (18, 0, {}), summary
    # Managed Instances: 6 in flight over environments of 3 processes: 2 environments at most
    assert 1 <= summary["instances"] <= 2 and summary["instances"] <= summary["processes"] <= 6
    assert "2 Managed Instances environments x 3 processes" in out.stdout
    assert "processes" in out.stdout and "instances (environments)" in out.stdout


def test_without_the_setup_the_handler_fails_on_the_missing_table(project):
    out = emulate(project, "--json", str(project / "out.json"))
    # the failures are the handler's, not the database's limit: shown, and exit status 1
    assert out.returncode == 1 and "--allow-failures" in out.stderr, out.stderr[-3000:]
    summary = json.loads((project / "out.json").read_text())["scenarios"]["direct"]["summary"]
    # the role may create its own table (no InsufficientPrivilege), but the setup's is missing
    assert summary["failures"] == 18 and summary["errors"] == {"UndefinedTable": 18}, summary
    # each Managed Instances worker's error reached the report with its message and traceback
    assert "UndefinedTable: 18 invocations" in out.stdout and 'relation "public.colors" does not exist' in out.stdout
    line = next(n for n, text in enumerate(HANDLER.splitlines(), 1) if "public.colors" in text)
    assert f'File "{project / "app.py"}", line {line}, in handler' in out.stdout, out.stdout


def test_a_failing_or_missing_setup_is_one_line_and_exit_2(project):
    (project / "bad.sql").write_text("CREATE TABLE broken (;")
    out = emulate(project, "--setup", str(project / "bad.sql"))
    assert out.returncode == 2 and "--setup" in out.stderr and "SyntaxError" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2, out.stderr
    out = emulate(project, "--setup", str(project / "nope.sql"))
    assert out.returncode == 2 and "no such file" in out.stderr, out.stderr
