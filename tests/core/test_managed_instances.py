"""Lambda Managed Instances: many worker processes per environment, never frozen."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import lambdapool
from lambdapool.testing import wait_for
from tests.support import LambdaContext, backends


def test_the_mode_is_detected_and_shown_in_the_invocation(monkeypatch):
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "orders")
    monkeypatch.setenv("AWS_LAMBDA_MAX_CONCURRENCY", "16")
    db = lambdapool.Database("postgresql://u@h/db")
    assert db.invocation.init_type == "lambda-managed-instances"
    assert db.invocation.processes_per_environment == 16
    assert db.settings.max_per_instance == 1  # one request per process at a time: one connection


def test_on_demand_lambda_is_one_process_per_environment(monkeypatch):
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "orders")
    monkeypatch.delenv("AWS_LAMBDA_MAX_CONCURRENCY", raising=False)
    db = lambdapool.Database("postgresql://u@h/db")
    assert db.invocation.init_type == "on-demand" and db.invocation.processes_per_environment == 1


def test_a_long_idle_gap_is_still_pinged_though_nothing_froze(pg_server, make_db, monkeypatch):
    monkeypatch.setenv("AWS_LAMBDA_MAX_CONCURRENCY", "4")
    db = make_db(pg_server.dsn, ping_after_idle=0.05)

    @db.lambda_handler
    def handler(event, context):
        with db.connection() as conn:
            return conn.execute("SELECT 1").fetchone()[0]

    handler({}, LambdaContext())
    time.sleep(0.1)  # (idle longer than ping_after_idle: the condition under test)
    handler({}, LambdaContext())
    assert db.stats()["pings"] == 1 and db.stats()["connects"] == 1


WORKERS = """
import multiprocessing, os, signal, sys, time
import lambdapool

def worker(dsn, ready):
    # The process's own SIGTERM handler (a runtime's graceful shutdown) keeps it alive: what
    # closes the connection is lambdapool's handler, chained before it.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    db = lambdapool.Database(dsn, application_name="lp-lmi")
    with db.invocation_scope(), db.connection() as conn:
        conn.execute("SELECT 1")
    ready.put(os.getpid())
    while True:  # waits for the next invocation, as a runtime worker does
        time.sleep(1)

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")  # as awslambdaric's run_concurrent starts its workers
    ready = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(sys.argv[1], ready)) for _ in range(int(sys.argv[2]))]
    for p in procs:
        p.start()
    print(" ".join(str(ready.get(timeout=60)) for _ in procs), flush=True)
    for p in procs:
        p.join()
"""


def test_sigterm_closes_the_connection_of_every_worker_process(pg_server, tmp_path):
    script = tmp_path / "workers.py"
    script.write_text(textwrap.dedent(WORKERS))
    env = {**os.environ, "AWS_LAMBDA_FUNCTION_NAME": "orders", "AWS_LAMBDA_MAX_CONCURRENCY": "4"}
    proc = subprocess.Popen([sys.executable, str(script), pg_server.dsn, "4"], stdout=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)  # fmt: skip
    try:
        pids = proc.stdout.readline().split()
        assert len(pids) == 4
        assert backends(pg_server, "lp-lmi") == 4  # one connection per worker process
        os.killpg(proc.pid, signal.SIGTERM)  # scale-in: the environment's processes get SIGTERM
        wait_for(lambda: not backends(pg_server, "lp-lmi"), "the workers' connections closed")
        assert backends(pg_server, "lp-lmi") == 0
        for pid in pids:  # closed by lambdapool in each worker, which is still alive
            os.kill(int(pid), 0)
    finally:
        # The whole group: the parent dies of the SIGTERM, its workers (which ignore it) do not.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
