"""What one test leaves in the process must not change the next (loaded with ``-p``, pyproject).

functions-framework's ``create_app`` writes FUNCTION_SIGNATURE_TYPE, FUNCTION_TARGET and their
kin into ``os.environ`` and never takes them back: a CloudEvent app made in one test turned every
later app into a CloudEvent one (GET answered 405, a served one never came up), and
FUNCTION_TARGET makes every later Database believe it runs on Cloud Functions.

Tests run in parallel (pytest-xdist: the README's test command says ``-n auto``), so what one test
does to the machine must not change the next either: a test marked ``alone`` (a burst of hundreds of
instances that saturates the CPUs, or a bound on wall-clock time) runs with no other test beside
it. Every test holds a lock on one file for its whole run, setup and teardown included: shared
for ordinary tests, exclusive for ``alone`` ones.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator

import pytest

LEAKED_BY_FUNCTIONS_FRAMEWORK = ("FUNCTION_SIGNATURE_TYPE", "FUNCTION_TARGET", "FUNCTION_TRIGGER_TYPE", "FUNCTION_NAME")


@pytest.fixture(autouse=True)
def _functions_framework_environment() -> Iterator[None]:
    before = {name: os.environ.get(name) for name in LEAKED_BY_FUNCTIONS_FRAMEWORK}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # set in every worker of one parallel run
    if run is None:  # not in parallel: nothing to share
        yield
        return
    alone = item.get_closest_marker("alone") is not None
    base = os.path.join(tempfile.gettempdir(), f"lambdapool-tests-{run}")
    # Two locks: "share" (shared by ordinary tests, exclusive for an alone one) and a turnstile an
    # alone test holds while it waits, so that ordinary tests starting one after another cannot keep
    # it waiting for ever (flock favours no one).
    with open(base + ".turnstile", "a") as turnstile, open(base + ".share", "a") as share:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if alone:
            fcntl.flock(share, fcntl.LOCK_EX)
        else:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
            fcntl.flock(share, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(share, fcntl.LOCK_UN)
            fcntl.flock(turnstile, fcntl.LOCK_UN)
