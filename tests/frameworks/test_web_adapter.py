"""Web apps served as they are, the way AWS Lambda Web Adapter and Cloud Run run them: a real
uvicorn, gunicorn or functions-framework process, FROZEN with SIGSTOP between requests (as
Lambda freezes the environment), a backend killed during the freeze, SIGCONT, and the next
request succeeds on a reconnected connection. One backend per instance across 50 requests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambdapool.testing import free_port, wait_for
from lambdapool.tools.testing.pytest_plugin import missing

try:
    import httpx
except ImportError as exc:  # pragma: no cover
    missing("httpx", str(exc))

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
APPS = Path(__file__).parent / "apps"
REQUESTS = 50
START_TIMEOUT = 120.0  # a bound for a stuck start, not a timing assumption


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]  # (the name in parentheses may hold spaces)


def freeze(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: process_state(pid) == "T", f"process {pid} to stop", START_TIMEOUT)


def thaw(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)
    wait_for(lambda: process_state(pid) != "T", f"process {pid} to continue", START_TIMEOUT)


class Served:
    """A server subprocess and an HTTP client on it; requests carry Lambda Web Adapter's
    context header (request id, deadline)."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.out = open(log, "wb")  # noqa: SIM115  (the server writes to it until stop() closes it)
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        # A new TCP connection per request: a keep-alive one may be closed by the server's idle
        # timer as the next request goes out (a reset), more so after a freeze.
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                                   limits=httpx.Limits(max_keepalive_connections=0))  # fmt: skip

    def up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
        try:
            return self.client.get("/stats").status_code == 200
        except httpx.HTTPError:
            return False

    def get(self, path: str) -> httpx.Response:
        context = {"request_id": str(uuid.uuid4()), "deadline": int(time.time() * 1000) + 30_000}
        return self.client.get(path, headers={"x-amzn-lambda-context": json.dumps(context)})

    def stats(self) -> dict[str, Any]:
        return dict(self.client.get("/stats").json())

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)  # (a frozen process cannot act on SIGTERM)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.out.close()


def command(server: str, port: int) -> list[str]:
    py, bind = sys.executable, f"127.0.0.1:{port}"
    if server == "uvicorn-starlette":
        return [py, "-m", "uvicorn", "tests.frameworks.apps.uvicorn_starlette:app", "--port", str(port),
                "--log-level", "warning"]  # fmt: skip
    if server == "uvicorn-fastapi":
        return [py, "-m", "uvicorn", "tests.frameworks.apps.uvicorn_fastapi:app", "--port", str(port),
                "--log-level", "warning"]  # fmt: skip
    # gunicorn: one worker; --timeout 0 so the arbiter does not kill a frozen worker
    if server == "gunicorn-uvicorn-worker":
        return [py, "-m", "gunicorn", "-w", "1", "-k", "uvicorn_worker.UvicornWorker", "--timeout", "0", "-b", bind,
                "tests.frameworks.apps.uvicorn_starlette:app"]  # fmt: skip
    if server == "gunicorn-flask":
        return [py, "-m", "gunicorn", "-w", "1", "--threads", "4", "--timeout", "0", "-b", bind,
                "tests.frameworks.apps.wsgi_apps:app"]  # fmt: skip
    if server == "functions-framework":
        return [py, "-m", "functions_framework", "--source", str(APPS / "cloud_fn.py"), "--target", "query",
                "--port", str(port), "--host", "127.0.0.1"]  # fmt: skip
    raise AssertionError(server)


@pytest.fixture
def serve(tmp_path: Path, route: Any) -> Iterator[Any]:
    started: list[Served] = []

    def start(server: str, driver: str) -> Served:
        module = {"uvicorn": "uvicorn", "gunicorn": "gunicorn", "functions": "functions_framework"}[
            server.split("-")[0]
        ]
        try:
            __import__(module)
        except ImportError as exc:
            missing(module, str(exc))
        port = free_port()
        env = {**os.environ, "LAMBDAPOOL_DSN": route.dsn, "LAMBDAPOOL_POOLER": route.pooler,
               "LAMBDAPOOL_DRIVER": driver,
               # One request at a time, as on Lambda: the tail of a request (FastAPI's yield
               # dependencies exit after the response, gunicorn closes the body after sending
               # it) may overlap the next one, which then waits for the slot instead of
               # opening a second connection.
               "LAMBDAPOOL_MAX_PER_INSTANCE": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)}  # fmt: skip
        served = Served(command(server, port), env, port, tmp_path / f"{server}.log")
        started.append(served)
        wait_for(served.up, f"{server} to answer", START_TIMEOUT)
        return served

    yield start
    for served in started:
        served.stop()


SETUPS = [
    ("uvicorn-starlette", "asyncpg", ["/async"]),
    ("uvicorn-starlette", "psycopg-async", ["/async"]),
    ("uvicorn-starlette", "psycopg", ["/async"]),
    # (not /async with psycopg here: a sync driver in an async def blocks the loop, and the
    # slot it waits for is held by the previous request's yield dependency, which needs the loop)
    ("uvicorn-fastapi", "psycopg", ["/sync", "/dep"]),
    ("uvicorn-fastapi", "asyncpg", ["/async"]),
    ("gunicorn-uvicorn-worker", "asyncpg", ["/async"]),
    ("gunicorn-flask", "psycopg", ["/sync", "/stream"]),
    ("functions-framework", "psycopg", ["/"]),
]


@pytest.mark.parametrize("server,driver,paths", SETUPS, ids=[f"{s}-{d}" for s, d, _ in SETUPS])
def test_frozen_between_requests_backend_killed_next_request_reconnects(serve, route, server, driver, paths):
    served = serve(server, driver)
    baseline = served.stats()  # (the readiness probe's /stats was an invocation, opening nothing)
    worker = int(baseline["os_pid"])  # gunicorn: freeze the worker, not the arbiter
    assert worker != served.proc.pid or not server.startswith("gunicorn")

    for i in range(REQUESTS):
        response = served.get(paths[i % len(paths)])
        assert response.status_code == 200, (i, response.text)
        check_body(response)
    stats = served.stats()
    assert stats["connects"] == 1, json.dumps(stats)
    assert stats["reuses"] >= REQUESTS - 1, stats
    assert stats["open_connections"] == 1

    for round_ in range(2):  # frozen, a backend killed meanwhile, thawed: the next request works
        freeze(worker)
        killed = route.kill_backends()
        assert killed >= 1
        thaw(worker)
        for path in paths:
            response = served.get(path)
            assert response.status_code == 200, (round_, path, response.text)
            check_body(response)

    stats = served.stats()
    assert stats["connect_failures"] == 0, stats
    if route.name == "direct":
        # One new connection per kill: a reconnect at the next acquire, or, when the freeze caught
        # a request's tail (FastAPI runs a yield dependency's exit after the response), a plain
        # connect after that tail found the connection dead and dropped it.
        assert stats["connects"] == 3, stats
    assert stats["open_connections"] == 1
    assert route.pins() == 0
    assert route.open_transactions() == 0
    if "/async" in paths:  # a request failing inside a transaction leaves nothing open
        assert served.get("/fail").status_code == 500
        response = served.get("/async")
        assert response.status_code == 200 and response.json()["clean"]
        assert route.open_transactions() == 0


def check_body(response: httpx.Response) -> None:
    if response.headers["content-type"].startswith("text/plain"):  # the streamed one
        lines = response.text.split()
        assert len(lines) == 3 and len({line.split(":")[2] for line in lines}) == 1  # one invocation
        return
    assert response.json()["clean"], "lent a connection inside a transaction"
