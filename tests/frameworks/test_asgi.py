"""db.asgi(app) under Mangum and Starlette's TestClient: each HTTP request one invocation, the
warm connection reused across requests on every driver, a killed backend replaced with no
failed request, lifespan and websocket passed through; and the bugs of issue #11 around
Mangum and FastAPI's sync yield dependencies."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import lambdapool
from lambdapool.tools.testing.pytest_plugin import missing
from tests.frameworks.apps.asgi_apps import fastapi_app, starlette_app
from tests.frameworks.apps.events import EVENTS, http_api_v2
from tests.support import DRIVERS, LambdaContext

try:
    import fastapi  # noqa: F401
    from mangum import Mangum
    from starlette.testclient import TestClient
except ImportError as exc:  # pragma: no cover
    missing("mangum / fastapi / starlette", str(exc))

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 50


def call(handler: Any, path: str, version: str = "v2", context: Any = None) -> tuple[int, Any]:
    response = handler(EVENTS[version](path), context or LambdaContext())
    body = response["body"]
    return response["statusCode"], json.loads(body) if body and body[0] in "[{" else body


def paths_for(driver: str) -> list[str]:
    return ["/async", "/sync", "/dep"] if driver == "psycopg" else ["/async"]


@pytest.mark.parametrize("driver", DRIVERS)
def test_mangum_each_request_one_invocation_warm_across_requests(make_db, route, driver):
    db = make_db(**route.settings(), driver=driver)
    handler = Mangum(db.asgi(fastapi_app(db)))
    paths = paths_for(driver)
    pids = set()
    for i in range(REQUESTS):
        version = "v2" if i % 2 else "v1"
        status, body = call(handler, paths[i % len(paths)], version)
        assert status == 200, body
        assert body["clean"], f"request {i} was lent a connection inside a transaction"
        pids.add(body["pid"])
    stats = db.stats()
    assert stats["connects"] == 1, stats  # one backend for the instance
    assert stats["invocations"] == REQUESTS  # lifespan (Mangum runs it per call) is not counted
    assert stats["reuses"] >= REQUESTS - 1, stats  # Mangum keeps the thread's loop: async ones too
    assert stats["open_connections"] == 1
    if route.name == "direct":
        assert len(pids) == 1

    # A request that fails inside a transaction leaves nothing open; the next one is clean.
    status, _ = call(handler, "/fail")
    assert status == 500
    assert call(handler, "/async")[1]["clean"]
    assert route.open_transactions() == 0

    # A backend killed between requests: replaced, before any statement, no failed request.
    for kill in range(3):
        route.kill_backends()
        for path in paths:
            status, body = call(handler, path)
            assert status == 200, (kill, path, body)
            assert body["clean"]
    stats = db.stats()
    if route.name == "direct":
        assert stats["reconnects"] == 3, stats
    assert stats["connect_failures"] == 0
    assert route.pins() == 0
    assert route.open_transactions() == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_mangum_passes_the_lambda_context(make_db, fw_pg, driver):
    db = make_db(fw_pg.dsn, driver=driver)
    handler = Mangum(db.asgi(starlette_app(db)))
    context = LambdaContext(remaining_ms=20_000)
    status, body = call(handler, "/stats", context=context)
    assert status == 200
    assert body["last_request_id"] == context.aws_request_id
    assert db.invocation.request_id == context.aws_request_id


@pytest.mark.parametrize("driver", DRIVERS)
def test_lambda_handler_accepts_a_mangum_instance(make_db, route, driver):
    """Bug 1: db.lambda_handler(Mangum(app)) raised AttributeError: 'Mangum' object has no
    attribute '__name__'. Now it works, counts one invocation per call, and keeps one backend."""
    db = make_db(**route.settings(), driver=driver)
    handler = db.lambda_handler(Mangum(starlette_app(db)))
    for _ in range(REQUESTS):
        status, body = call(handler, "/async")
        assert status == 200, body
        assert body["clean"]
    stats = db.stats()
    assert stats["connects"] == 1, stats
    assert stats["invocations"] == REQUESTS
    route.kill_backends()
    assert call(handler, "/async")[0] == 200
    assert route.pins() == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_lambda_handler_around_mangum_around_asgi_counts_once(make_db, fw_pg, driver):
    db = make_db(fw_pg.dsn, driver=driver)
    handler = db.lambda_handler(Mangum(db.asgi(starlette_app(db))))
    for _ in range(10):
        assert call(handler, "/async")[0] == 200
    assert db.stats()["invocations"] == 10
    assert db.stats()["connects"] == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_async_def_around_mangum_is_a_config_error(make_db, fw_pg, driver):
    """Bug 2: an async def calling Mangum failed with 'This event loop is already running'.
    It cannot work (Mangum runs the loop itself, and an async handler runs on the instance's
    loop); it is a ConfigError naming the fix, and the fix works."""
    db = make_db(fw_pg.dsn, driver=driver)
    mangum = Mangum(db.asgi(starlette_app(db)), lifespan="off")

    @db.lambda_handler
    async def handler(event: Any, context: Any) -> Any:
        return mangum(event, context)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Mangum's own never-awaited coroutine
        with pytest.raises(lambdapool.ConfigError, match=r"Mangum.*db\.lambda_handler\(Mangum\(db\.asgi\(app\)\)\)"):
            handler(http_api_v2("/async"), LambdaContext())

    fixed = make_db(fw_pg.dsn, driver=driver)
    good = fixed.lambda_handler(Mangum(fixed.asgi(starlette_app(fixed))))
    assert call(good, "/async")[0] == 200
    assert call(good, "/async")[0] == 200
    assert fixed.stats()["connects"] == 1 and fixed.stats()["reuses"] >= 1


def test_an_unrelated_runtime_error_passes_through(make_db, fw_pg):
    db = make_db(fw_pg.dsn, driver="asyncpg")

    @db.lambda_handler
    async def handler(event: Any, context: Any) -> Any:
        raise RuntimeError("mine")

    with pytest.raises(RuntimeError, match="^mine$"):
        handler({}, LambdaContext())


@pytest.mark.parametrize("wrapped", [True, False], ids=["db.asgi", "bare"])
def test_sync_yield_dependency_across_threads_leaks_nothing(make_db, route, wrapped):
    """Bug 3: a sync yield dependency entered db.connection() on one worker thread and left it
    on another: 'NoneType' object has no attribute 'depth', and the slot leaked until every
    later request waited for acquire_timeout and failed."""
    db = make_db(**route.settings(), driver="psycopg", max_per_instance=1, acquire_timeout=3)
    app = fastapi_app(db)
    with TestClient(db.asgi(app) if wrapped else app, raise_server_exceptions=False) as client:
        for i in range(REQUESTS):
            response = client.get("/dep")
            assert response.status_code == 200, (i, response.text)
            assert response.json()["clean"]
            stats = db.stats()
            assert stats["open_connections"] <= 1
        route.kill_backends()
        assert client.get("/dep").status_code == 200
    stats = db.stats()
    assert stats["connects"] <= 2 and stats["reconnects"] <= 1, stats  # (connects counts the reconnect)
    assert db._slots.idle and len(db._slots.idle) == 1, "the slot was not given back"
    assert route.open_transactions() == 0
    if wrapped:
        assert stats["invocations"] == REQUESTS + 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_testclient_lifespan_and_websocket_pass_through(make_db, fw_pg, driver):
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    db = make_db(fw_pg.dsn, driver=driver)
    started: list[bool] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        started.append(True)
        yield

    async def ws(websocket: WebSocket) -> None:  # each connection() block is its own invocation
        await websocket.accept()
        for _ in range(3):
            await websocket.receive_text()
            pid = await _pid(db)
            await websocket.send_text(str(pid))
        await websocket.close()

    inner = starlette_app(db)
    app = Starlette(routes=[*inner.routes, WebSocketRoute("/ws", ws)], lifespan=lifespan)
    with TestClient(db.asgi(app)) as client:
        assert started == [True]
        assert db.stats()["invocations"] == 0
        with client.websocket_connect("/ws") as socket:
            pids = set()
            for _ in range(3):
                socket.send_text("q")
                pids.add(socket.receive_text())
        assert len(pids) == 1
        assert db.stats()["invocations"] == 0  # no invocation held for the socket's life
        assert len(db._slots.idle) == 1
        for _ in range(5):
            assert client.get("/async").json()["clean"]
    assert db.stats()["invocations"] == 5
    assert db.stats()["connects"] == 1


async def _pid(db: lambdapool.Database[Any]) -> Any:
    if db.settings.driver == "psycopg":
        with db.connection() as conn:
            return conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    async with db.connection() as conn:
        if db.settings.driver == "asyncpg":
            return await conn.fetchval("SELECT pg_backend_pid()")
        return (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]


def test_lambda_web_adapter_context_header(make_db, fw_pg):
    import time

    db = make_db(fw_pg.dsn, driver="asyncpg")
    with TestClient(db.asgi(starlette_app(db))) as client:
        header = json.dumps({"request_id": "req-123", "deadline": int(time.time() * 1000) + 30_000})
        body = client.get("/stats", headers={"x-amzn-lambda-context": header}).json()
        assert body["last_request_id"] == "req-123"
        assert 0 < db.invocation.remaining_time <= 30  # (else invocation_timeout: 60)
        assert client.get("/stats", headers={"x-amzn-lambda-context": "not json"}).status_code == 200


def test_asgi_rejects_a_non_app(make_db, fw_pg):
    db = make_db(fw_pg.dsn)
    with pytest.raises(lambdapool.ConfigError, match="ASGI app"):
        db.asgi(42)


# -- the example -------------------------------------------------------------------------
EXAMPLE = ROOT / "examples" / "fastapi_mangum" / "app.py"


def _load_example(monkeypatch: pytest.MonkeyPatch, dsn: str, driver: str) -> Any:
    monkeypatch.setenv("LAMBDAPOOL_DSN", dsn)
    monkeypatch.setenv("LAMBDAPOOL_DRIVER", driver)
    spec = importlib.util.spec_from_file_location(f"fastapi_mangum_example_{driver}", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_example_fastapi_mangum(monkeypatch, fw_pg, driver):
    module = _load_example(monkeypatch, fw_pg.dsn, driver)
    try:
        paths = ["/items/7", "/items/7/sync"] if driver == "psycopg" else ["/items/7"]
        for i in range(20):
            status, body = call(module.handler, paths[i % len(paths)], "v2" if i % 3 else "v1")
            assert status == 200, body
            assert body["result"] == 8
        stats = module.db.stats()
        assert stats["connects"] == 1 and stats["invocations"] == 20
    finally:
        module.db.close()


def test_example_fastapi_mangum_passes_mypy_strict():
    try:
        import mypy  # noqa: F401
    except ImportError as exc:
        missing("mypy", str(exc))
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--ignore-missing-imports", "--follow-imports=silent", str(EXAMPLE)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "MYPYPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
