"""Django's own test suite against ``lambdapool.django`` and against Django's stock backend.

A selection of Django's test labels, from the sdist of the installed Django version (fetched
once per machine into the user's cache), runs on a throwaway cluster once per backend, each
under Django's ``tests/runtests.py`` with ``django_suite/suite_settings.py`` (both at once;
``DJ_SUITE_SEQUENTIAL=1`` for one after the other); the recording runner writes every test's
outcome. Every test that passes on stock must pass on ours, except the differences listed here
and in docs/frameworks.md (the Django section), each for a reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from lambdapool.testing import PostgresServer
from lambdapool.tools.testing.pytest_plugin import missing

try:
    import django  # noqa: F401
except ImportError as exc:
    missing(f"the django extra ({exc.name})", "pip install 'lambdapool[django]'")

REPO = Path(__file__).parents[2]
SETTINGS_DIR = Path(__file__).parent / "django_suite"
PASSWORD = "suite-pw"
LABELS = [
    "backends", "transactions", "transaction_hooks", "select_for_update", "basic", "queries", "bulk_create",
    "delete", "update", "get_or_create", "expressions", "aggregation", "model_fields", "test_utils",
]  # fmt: skip
RUN_TIMEOUT = 240  # seconds for a run (~55 s here, both backends at once): a hang fails the test

POOL = "OPTIONS['pool'] (Django's psycopg_pool) is refused: lambdapool lends the connection"
CONN_MAX_AGE = (
    "CONN_MAX_AGE / CONN_HEALTH_CHECKS: a wrapper gives its connection back at every request end "
    "(close_if_unusable_or_obsolete), lambdapool's max_lifetime and liveness check take their place"
)
TIME_ZONE = (
    "the session time zone is set in the startup packet (no SET TIME ZONE, which pins behind a pooler), "
    "so RESET TIMEZONE goes back to Django's zone, not the server's"
)
# Tests that pass on Django's backend and not on ours, and why (docs/frameworks.md lists them too).
EXPECTED_DIFFERENCES = {
    "backends.postgresql.tests.Tests.test_connect_pool": POOL,
    "backends.postgresql.tests.Tests.test_connect_pool_set_to_true": POOL,
    "backends.postgresql.tests.Tests.test_connect_pool_with_timezone": POOL,
    "backends.postgresql.tests.Tests.test_pooling_health_checks": POOL,
    "backends.postgresql.tests.Tests.test_pooling_not_support_persistent_connections": POOL,
    "backends.base.test_base.ConnectionHealthChecksTests.test_health_checks_disabled": CONN_MAX_AGE,
    "backends.base.test_base.ConnectionHealthChecksTests.test_health_checks_enabled": CONN_MAX_AGE,
    "backends.base.test_base.ConnectionHealthChecksTests.test_health_checks_enabled_errors_occurred": CONN_MAX_AGE,
    "backends.base.test_base.ConnectionHealthChecksTests.test_set_autocommit_health_checks_enabled": CONN_MAX_AGE,
    "backends.postgresql.tests.Tests.test_bypass_timezone_configuration": TIME_ZONE,
}
BACKENDS = {"stock": "django.db.backends.postgresql", "lambdapool": "lambdapool.django"}
SEQUENTIAL = os.environ.get("DJ_SUITE_SEQUENTIAL") == "1"  # one backend after the other (to time each)


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lambdapool" / "django-tests"


def django_tests_dir() -> Path:
    """``tests/`` of the installed Django's sdist, downloaded and unpacked once per machine."""
    version = metadata.version("django")
    target = cache_root() / f"django-{version}"
    if (target / "runtests.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                   "--dest", tmp, f"django=={version}"]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            missing("Django's test suite", f"pip download django=={version} took over 300 s")
        if done.returncode != 0:
            missing("Django's test suite", f"pip download django=={version} failed: {done.stderr.strip()[-500:]}")
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if len(sdists) != 1:
            missing("Django's test suite", f"pip download django=={version} gave {[p.name for p in sdists]}")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(sdists[0]) as tar:
            top = tar.getnames()[0].split("/")[0]
            members = [m for m in tar.getmembers() if m.name.startswith(f"{top}/tests/")]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # (3.10.12+, 3.11.4+)
            tar.extractall(unpacked, members=members, **safe)  # type: ignore[arg-type]
        try:
            os.rename(unpacked / top / "tests", target)  # atomic: a concurrent run may have won
        except OSError:
            if not (target / "runtests.py").is_file():
                raise
    return target


def start_run(name: str, pg: PostgresServer, tests_dir: Path, out_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Start Django's runtests.py for one backend; its process and its results file."""
    results = out_dir / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMBDAPOOL_", "DJ_", "DJANGO_"))}
    env.update(
        DJ_ENGINE=BACKENDS[name], DJ_HOST=pg.host, DJ_PORT=str(pg.port), DJ_USER="postgres", DJ_PASSWORD=PASSWORD,
        DJ_PREFIX=name, DJ_RESULTS=str(results), PYTHONPATH=os.pathsep.join([str(SETTINGS_DIR), str(REPO)]),
    )  # fmt: skip
    log = (out_dir / f"{name}.log").open("wb")
    command = [sys.executable, "runtests.py", "--settings", "suite_settings", "--parallel", "1", "--noinput", *LABELS]
    child = subprocess.Popen(command, cwd=tests_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)  # fmt: skip
    log.close()
    return child, results


def finish_run(name: str, child: subprocess.Popen[bytes], results: Path, deadline: float) -> dict[str, Any]:
    """Wait for the run (a timeout fails the test: the suite must never hang); its outcomes."""
    log = results.with_suffix(".log")
    try:
        child.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, 9)
        child.wait()
        pytest.fail(f"Django's suite on {name} hung (over {RUN_TIMEOUT} s); its log ends:\n{log.read_text()[-3000:]}")
    if not results.is_file():
        pytest.fail(f"Django's suite on {name} ended ({child.returncode}) with no results:\n{log.read_text()[-3000:]}")
    outcome: dict[str, Any] = json.loads(results.read_text())
    return outcome


def passed(run: dict[str, Any]) -> set[str]:
    return {test for test, outcome in run["outcomes"].items() if outcome == "pass"}


def test_every_expected_difference_is_documented() -> None:
    docs = (REPO / "docs" / "frameworks.md").read_text()
    assert not [test for test in EXPECTED_DIFFERENCES if f"{test.rsplit('.', 1)[1]}`" not in docs]


@pytest.mark.slow
def test_djangos_own_suite_passes_on_lambdapool_as_on_stock(
    pg_factory: Callable[..., PostgresServer], tmp_path: Path
) -> None:
    tests_dir = django_tests_dir()
    pg = pg_factory(max_connections=100, password=PASSWORD)
    started = time.monotonic()
    runs, children = {}, {}
    try:
        for name in BACKENDS:  # both at once (2 cores: ~55 s against ~80 s one after the other, same results)
            children[name] = start_run(name, pg, tests_dir, tmp_path)
            if SEQUENTIAL:
                runs[name] = finish_run(name, *children[name], deadline=time.monotonic() + RUN_TIMEOUT)
        for name in BACKENDS:
            if name not in runs:
                runs[name] = finish_run(name, *children[name], deadline=started + RUN_TIMEOUT)
    finally:
        for child, _ in children.values():
            if child.poll() is None:
                os.killpg(child.pid, 9)
                child.wait()
    stock, ours = passed(runs["stock"]), passed(runs["lambdapool"])
    summary = {name: f"{run['tests_run']} run, {len(passed(run))} passed" for name, run in runs.items()} | {
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"Django's suite: {summary}")
    assert len(stock) > 1000, summary  # the selection ran (a broken setup passes nothing)
    lost = stock - ours
    unexpected = sorted(lost - EXPECTED_DIFFERENCES.keys())
    ours_run = runs["lambdapool"]
    why = "\n".join(
        f"--- {test}: {ours_run['outcomes'].get(test, 'not run')}\n{ours_run['tracebacks'].get(test, '')}"
        for test in unexpected[:5]
    )
    assert not unexpected, f"pass on stock, not on lambdapool.django: {unexpected}\n{why}\n(logs in {tmp_path})"
    gone = sorted(EXPECTED_DIFFERENCES.keys() - lost)
    assert not gone, f"listed as differences but pass on both (or fail on stock): {gone}; update the list and docs"
