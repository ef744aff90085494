"""What a newcomer's first mistakes look like: a driver not installed, no DSN on a laptop, a
Postgres socket that is not there, a database that does not answer. Each says so, early, the same
way for every driver, and without a secret."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import lambdapool
from lambdapool.testing import free_port
from tests.support import DRIVERS, LambdaContext, query_handler

PLATFORM_VARIABLES = ("AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_RUNTIME_API", "K_SERVICE", "FUNCTION_TARGET")


@pytest.mark.parametrize(
    "driver, package", [("psycopg", "psycopg"), ("psycopg-async", "psycopg"), ("asyncpg", "asyncpg")]
)
def test_a_driver_not_installed_is_a_config_error_at_init_naming_the_extra(monkeypatch, driver, package):
    # Before: Database() passed, and the first invocation failed with ConnectionUnavailable
    # "ModuleNotFoundError: No module named 'psycopg'", no word of what to install.
    monkeypatch.setitem(sys.modules, package, None)  # Python's own mark for "cannot be imported"
    with pytest.raises(lambdapool.ConfigError) as info:
        lambdapool.Database("postgresql://app@db.internal/app", driver=driver)
    assert f"pip install 'lambdapool[{package}]'" in str(info.value) and f"driver={driver!r}" in str(info.value)


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LAMBDAPOOL_DSN", "DATABASE_URL", "PGHOST", *PLATFORM_VARIABLES)
    }
    command = [sys.executable, "-c", code]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env={**clean, **env})


def test_no_dsn_outside_a_platform_warns_once_naming_lambdapool_dsn():
    # Before: nothing was said; libpq's defaults (the local socket, the OS user) were used.
    out = _python(
        "import lambdapool\n"
        "lambdapool.Database(); lambdapool.Database.from_env(); lambdapool.Database(driver='asyncpg')\n"
        "print('built')"
    )
    assert out.returncode == 0 and out.stdout == "built\n", out.stderr
    assert out.stderr.count("NoDsnWarning") == 1, out.stderr  # three Databases, one warning
    assert "<string>:2: NoDsnWarning" in out.stderr  # at the user's line
    assert "set LAMBDAPOOL_DSN=postgresql://user@host:5432/dbname" in out.stderr and "libpq's defaults" in out.stderr


@pytest.mark.parametrize("env", [{"LAMBDAPOOL_DSN": "postgresql://app@db.internal/app"}, {"PGHOST": "db.internal"}])
def test_no_warning_when_something_names_the_database(env):
    out = _python("import lambdapool; lambdapool.Database.from_env(); print('built')", **env)
    assert out.returncode == 0 and out.stdout == "built\n" and out.stderr == "", out.stderr


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("socket_dir", ["tmp", "/cloudsql/project:region:instance"])
def test_a_missing_socket_file_is_final_for_every_driver(tmp_path, make_db, driver, socket_dir):
    # Before: psycopg gave up at once ("No such file or directory"), asyncpg (FileNotFoundError)
    # retried it for the whole acquire_timeout.
    host = tmp_path if socket_dir == "tmp" else socket_dir  # an empty directory / none at all
    db = make_db(f"host={host} port=5432 user=app dbname=app", driver=driver, acquire_timeout=5)
    started = time.monotonic()
    with pytest.raises(lambdapool.ConnectionUnavailable, match=r"1 attempt in .* the error is not transient"):
        query_handler(db)({}, LambdaContext())
    assert time.monotonic() - started < 2.0
    assert db.stats()["connect_retries"] == 0


def test_a_connect_still_retrying_after_a_few_seconds_logs_a_warning(make_db, caplog):
    # Before: retries were logged at DEBUG only; a handler stuck connecting said nothing until
    # its budget ran out.
    caplog.set_level(logging.WARNING, logger="lambdapool")
    port = free_port()  # nothing listens: connection refused, retried as a blip
    dsn = f"postgresql://app:s3cr3t-pw@127.0.0.1:{port}/app"
    handlers = [query_handler(make_db(dsn, driver=d, acquire_timeout=4)) for d in DRIVERS]

    def fail(handler) -> str:
        with pytest.raises(lambdapool.ConnectionUnavailable) as info:
            handler({}, LambdaContext())
        return str(info.value)

    with ThreadPoolExecutor(len(handlers)) as pool:  # side by side: one wait for all three
        list(pool.map(fail, handlers))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(DRIVERS), warnings  # once per connect, not once per attempt
    for text in warnings:
        assert f"still trying to connect to app@127.0.0.1:{port}/app" in text, text
        assert " attempts in " in text and "s left before giving up" in text and "refused" in text.lower(), text
        assert "s3cr3t-pw" not in text
