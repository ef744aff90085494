"""@db.cloud_function under the real functions-framework: one backend when sequential, never
more than max_per_instance when concurrent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lambdapool.testing import WaitTimeout, free_port, wait_for
from lambdapool.tools.testing.process import stop_process
from lambdapool.tools.testing.pytest_plugin import missing
from tests.support import backends

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cloud_function" / "main.py"


@pytest.fixture
def functions_framework(pg_server):
    exe = shutil.which("functions-framework")
    if exe is None:
        missing("functions-framework", "pip install 'lambdapool[gcp]'")
    port = free_port()
    env = dict(os.environ, LAMBDAPOOL_DSN=pg_server.dsn, LAMBDAPOOL_MAX_PER_INSTANCE="3",
               LAMBDAPOOL_APPLICATION_NAME="lp-gcf", LAMBDAPOOL_ACQUIRE_TIMEOUT="30")  # fmt: skip
    proc = subprocess.Popen(
        [exe, "--target", "hello", "--source", str(EXAMPLE), "--port", str(port), "--host", "127.0.0.1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"

    def answers() -> bool:
        try:
            urllib.request.urlopen(url + "?sleep=0", timeout=2).read()
            return True
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"functions-framework exited: {proc.stdout.read()}")
            return False

    try:
        wait_for(answers, "functions-framework answering", timeout=30, interval=0.1)
    except WaitTimeout:
        proc.kill()
        raise
    yield url
    stop_process(proc)


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())


def test_sequential_requests_reuse_one_backend(functions_framework):
    results = [get(functions_framework + "?sleep=0") for _ in range(30)]
    assert len({r["backend_pid"] for r in results}) == 1
    assert [r["cold_start"] for r in results].count(True) == 0  # the readiness probe was the cold one
    numbers = [r["invocation"] for r in results]
    assert numbers == sorted(numbers)


@pytest.mark.slow
def test_concurrent_requests_never_share_and_never_exceed_max_per_instance(functions_framework, pg_server,
                                                                           backend_sampler):  # fmt: skip
    sampler = backend_sampler(pg_server, interval=0.02, application_name_like="lp-gcf")
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:  # functions-framework serves on 8 threads
            results = list(pool.map(get, [functions_framework + "?sleep=0.3"] * 24))
    finally:
        sampler.stop()
    assert len(results) == 24  # none failed
    pids = {r["backend_pid"] for r in results}
    assert 1 < len(pids) <= 3, "concurrent requests must each get their own connection, at most 3"
    assert sampler.peak <= 3
    assert backends(pg_server, "lp-gcf") <= 3
