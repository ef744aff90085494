"""`lambdapool demo` and `lambdapool emulate`, run the way a user runs them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lambdapool.testing import free_port
from lambdapool.tools.cli import main
from tests.support import need_cli_parts

pytestmark = pytest.mark.alone  # (demo and emulate run bursts that saturate the CPUs)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lambda_psycopg" / "handler.py"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def parts() -> Callable[..., None]:
    """Check what a command will need on this machine: skip on a laptop, fail in CI."""
    return need_cli_parts


@pytest.mark.slow
def test_demo_shows_the_three_runs_side_by_side_and_says_what_each_is(tmp_path, parts):
    parts()
    # GIVEN nothing but Postgres binaries; WHEN a newcomer runs `lambdapool demo` (a fresh process)
    out = subprocess.run([sys.executable, "-m", "lambdapool", "demo", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=180, cwd=tmp_path,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    # THEN direct without the guard (a hand-written handler) was refused at the limit: failures,
    # "too many clients", peak == limit
    direct = re.search(r"^direct \(no guard\): (\d+) of 200 invocations failed \((\d+) refused: too many clients"
                       r"(?:, (\d+) timed out connecting)?\), peak (\d+) backends of the (\d+) the database allows$",
                       out.stdout, re.M)  # fmt: skip
    assert direct, out.stdout
    failed, refused, late, peak, limit = (int(g or 0) for g in direct.groups())
    # every failure was the limit's doing: refused, or (a loaded machine) out of time connecting
    # to a server busy refusing others
    assert failed > 0 and refused > 0 and refused + late == failed and peak == limit == 19
    # AND direct with lambdapool's defaults (the budget guard on): no failure, at the limit, by
    # giving connections back and opening them again (more connects than environments)
    guarded = re.search(r"^direct \(defaults\): all 200 invocations succeeded, peak (\d+) backends of the 19 the "
                        r"database allows; (\d+) connects for 40 environments$", out.stdout, re.M)  # fmt: skip
    assert guarded and int(guarded.group(1)) <= 19 and int(guarded.group(2)) > 40, out.stdout
    # AND the same burst through the local proxy: no failure, the database never above the cap
    local = re.search(r"^local proxy: all 200 invocations succeeded, peak (\d+) backends of the 19 the database "
                      r"allows \(cap 10\)$", out.stdout, re.M)  # fmt: skip
    assert local and 1 <= int(local.group(1)) <= 10, out.stdout
    assert re.search(r"^peak backends / limit\s+19 / 19\s+\d+ / 19\s+\d+ / 19$", out.stdout, re.M), out.stdout
    assert re.search(r"^\s+direct \(no guard\)\s+direct \(defaults\)\s+local proxy$", out.stdout, re.M), out.stdout
    # AND it says what each run is, and why the proxied run's warm latency is higher (queueing)
    said = " ".join(out.stdout.split())
    assert "direct (no guard) each environment connects straight to Postgres" in said
    assert "as a hand-written handler does" in said and "LAMBDAPOOL_BUDGET_GUARD=false" in said
    assert "direct (defaults) the same, with lambdapool's defaults: the budget guard" in said
    assert "local proxy through the bundled local proxy, which behaves like RDS Proxy, capped at 10 backends" in said
    assert re.search(r"Why the proxy's warm p50 is higher \(\d+ ms, against \d+ ms direct\): up to 40 invocations "
                     r"in flight take turns on its 10 backends, each holding one for 50 ms, so an invocation queues "
                     r"for a free backend, about 40 / 10 x 50 ms = 200 ms", said), said  # fmt: skip
    # AND it said where the chart went, and that is a PNG; progress was shown while it ran
    chart = tmp_path / "lambdapool-demo.png"
    assert f"chart written to {chart.resolve()}" in out.stdout
    assert chart.read_bytes()[:8] == PNG and chart.stat().st_size > 10_000
    assert re.search(r"direct \(no guard\): 200/200 invocations, \d+ failed", out.stderr)
    assert "direct (defaults): 200/200 invocations, 0 failed" in out.stderr
    assert "local proxy: 200/200 invocations, 0 failed" in out.stderr


@pytest.mark.slow
def test_emulate_runs_the_example_handler_through_two_poolers_side_by_side(tmp_path, capsys, parts):
    parts()
    chart, figures = tmp_path / "fanout.png", tmp_path / "fanout.json"
    code = main(
        [
            "emulate",
            f"{EXAMPLE}:handler",
            "--pooler",
            "direct",
            "--pooler",
            "local",
            "--concurrency",
            "8",
            "--invocations",
            "40",
            "--max-connections",
            "20",
            "--chart",
            str(chart),
            "--json",
            str(figures),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(figures.read_text())["scenarios"]
    assert list(doc) == ["direct", "local"]
    direct, local = doc["direct"]["summary"], doc["local"]["summary"]
    for summary in (direct, local):
        assert (summary["invocations"], summary["failures"], summary["limit"]) == (40, 0, 19)
        assert 1 <= summary["cold_starts"] <= 8 and summary["reconnects"] == 0
        assert summary["warm_p50_ms"] is not None and summary["sample_hz"] >= 20
    assert local["cap"] == 12 and 1 <= local["peak_backends"] <= 12 and local["pinned"] == 0
    assert local["pooler_peak"] <= 12 and direct["cap"] is None
    assert doc["local"]["timeline"], "the backends timeline is in the JSON"
    # the table names every figure the issue asks for, one column per pooler
    for label in ("invocations", "failed", "cold starts", "reconnects", "peak backends / limit", "pinned sessions",
                  "cold p50/p95/p99 ms", "warm p50/p95/p99 ms"):  # fmt: skip
        assert re.search(rf"^{re.escape(label)}\s", out, re.M), label
    assert re.search(r"^\s+direct\s+local$", out, re.M)
    assert chart.read_bytes()[:8] == PNG and f"chart written to {chart.resolve()}" in out
    assert "local: 40/40 invocations, 0 failed" in err  # progress


@pytest.mark.slow
def test_emulate_through_pgbouncer_and_the_rds_proxy_path_with_light_instances(tmp_path, capsys, parts):
    parts(pgbouncer=True, moto=True)
    # rds-proxy: found by name in moto's server, IAM tokens, TLS, then the local proxy's cap
    figures = tmp_path / "fanout.json"
    code = main(
        [
            "emulate",
            f"{EXAMPLE}:handler",
            "--pooler",
            "pgbouncer,rds-proxy",
            "--concurrency",
            "4",
            "--invocations",
            "12",
            "--light",
            "4",
            "--cap",
            "3",
            "--timeout",
            "60",
            "--json",
            str(figures),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    doc = json.loads(figures.read_text())["scenarios"]
    for name in ("pgbouncer", "rds-proxy"):
        summary = doc[name]["summary"]
        # 12 invocations on environments + 4 light instances x 3 rounds
        assert (summary["invocations"], summary["failures"]) == (24, 0), (name, summary["errors"])
        assert summary["cap"] == 3 and 1 <= summary["peak_backends"] <= 3 and 1 <= summary["pooler_peak"] <= 3
        assert summary["instances"] >= 5, "environments and light instances both ran"
    assert doc["rds-proxy"]["summary"]["pinned"] == 0
    assert "POST / HTTP" not in err, "moto's server keeps quiet"


@pytest.mark.slow
def test_emulate_against_a_running_database_counts_the_roles_own_limit(pg_factory, tmp_path, capsys, parts):
    # GIVEN a database of yours: 12 slots, 3 reserved for superusers, the handler's role is not one
    parts()
    pg = pg_factory(max_connections=12)
    pg.psql("CREATE ROLE app LOGIN")
    figures = tmp_path / "fanout.json"
    code = main(["emulate", f"{EXAMPLE}:handler", "--dsn", f"postgresql://app@{pg.host}:{pg.port}/postgres",
                 "--pooler", "direct", "--no-guard", "--concurrency", "12", "--invocations", "24", "--timeout", "5",
                 "--env", "LAMBDAPOOL_ACQUIRE_TIMEOUT=1", "--json", str(figures)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads(figures.read_text())["scenarios"]["direct (no guard)"]["summary"]
    # THEN the limit is what the role can have (12 - 3 reserved - the sampler's own), and it was hit
    assert summary["limit"] == 8 and summary["peak_backends"] == 8
    assert summary["failures"] > 0 and summary["refused"] > 0
    assert summary["refused"] + summary["timed_out"] == summary["failures"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["no/such/app.py:handler"], "no such file 'no/such/app.py'"),
        ([f"{EXAMPLE}:nope"], "defines no top-level 'nope'"),
        (
            [f"{EXAMPLE}"],
            f"name the function too (expected path/to/app.py:handler or Lambda's app.handler); "
            f"did you mean {EXAMPLE}:handler?",
        ),
        (
            [f"{EXAMPLE}:handler", "--pooler", "pgpool"],
            "--pooler 'pgpool': not one of direct, local, pgbouncer, rds-proxy",
        ),
        ([f"{EXAMPLE}:handler", "--pooler", "local,local"], "each pooler once"),
        ([f"{EXAMPLE}:handler", "--concurrency", "0"], "--concurrency 0: must be at least 1"),
        ([f"{EXAMPLE}:handler", "--event", "[1]"], "--event: expected a JSON object"),
        ([f"{EXAMPLE}:handler", "--env", "s3cr3t"], "--env: expected NAME=VALUE"),
    ],
)
def test_emulate_bad_input_is_one_line_and_exit_2(capsys, args, message):
    code = main(["emulate", *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("lambdapool emulate: ") and message in err, err
    assert "s3cr3t" not in err


def test_emulate_unreachable_dsn_is_one_line_without_the_password(capsys):
    dsn = f"postgresql://app:hunter2@127.0.0.1:{free_port()}/postgres"
    code = main(["emulate", f"{EXAMPLE}:handler", "--dsn", dsn])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot connect" in err and "hunter2" not in err, err


@pytest.mark.parametrize(
    "absent, command, install",
    [
        # the user-facing extras, never the project's own dev toolchain
        ({"matplotlib"}, ["emulate", f"{EXAMPLE}:handler", "--chart", "out.png"], "pip install matplotlib"),
        ({"awslambdaric"}, ["emulate", f"{EXAMPLE}:handler"], "pip install 'lambdapool[testing]'"),
        ({"awslambdaric", "matplotlib"}, ["demo"], "pip install 'lambdapool[demo]'"),
    ],
)
def test_a_missing_module_is_named_in_one_line_with_what_to_install(capsys, monkeypatch, absent, command, install):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a))
    code = main(command)
    err = capsys.readouterr().err
    assert code == 2 and err == f"lambdapool {command[0]}: {', '.join(sorted(absent))} not installed: {install}\n"
