"""db.wsgi(app): each request one invocation, lasting until the server closes the response
(PEP 3333), so a streamed body still has the connection; an exception from the app ends it
too. Flask through its test client and through a hand-driven WSGI server, and Flask under
functions-framework with @db.cloud_function. (Real gunicorn: test_web_adapter.py.)"""

from __future__ import annotations

import io
import sys
import wsgiref.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

import lambdapool
from lambdapool.tools.testing.pytest_plugin import missing
from tests.frameworks.apps.wsgi_apps import flask_app
from tests.frameworks.conftest import open_transactions

try:
    import flask  # noqa: F401
except ImportError as exc:  # pragma: no cover
    missing("flask", str(exc))

REQUESTS = 50
APPS = Path(__file__).parent / "apps"


def environ(path: str) -> dict[str, Any]:
    env: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    wsgiref.util.setup_testing_defaults(env)
    return env


class Server:
    """The server's side of PEP 3333, by hand: call, iterate, close; what it saw."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.status = ""

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.status = status
        return lambda data: None

    def call(self, path: str) -> Any:
        return self.app(environ(path), self.start_response)


def test_flask_each_request_one_invocation(make_db, route):
    db = make_db(**route.settings(), driver="psycopg")
    client = Client(db.wsgi(flask_app(db)))  # buffered=True: closes each response, as a server does
    pids = set()
    for _i in range(REQUESTS):
        response = client.get("/sync", buffered=True)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.json["clean"]
        pids.add(response.json["pid"])
    stats = db.stats()
    assert stats["connects"] == 1 and stats["invocations"] == REQUESTS, stats
    assert stats["reuses"] >= REQUESTS - 1
    if route.name == "direct":
        assert len(pids) == 1

    assert client.get("/fail", buffered=True).status_code == 500  # Flask turns it into a 500
    assert route.open_transactions() == 0
    for _ in range(3):
        route.kill_backends()
        response = client.get("/sync", buffered=True)
        assert response.status_code == 200 and response.json["clean"]
    if route.name == "direct":
        assert db.stats()["reconnects"] == 3
    assert db.stats()["connect_failures"] == 0
    assert route.pins() == 0
    assert len(db._slots.idle) == 1


def test_streamed_response_keeps_the_connection_while_the_body_is_sent(make_db, fw_pg):
    db = make_db(fw_pg.dsn, driver="psycopg", max_per_instance=1)
    server = Server(db.wsgi(flask_app(db)))
    result = server.call("/stream")
    assert server.status.startswith("200")
    chunks = []
    for chunk in result:  # the generator queries while the server iterates
        chunks.append(chunk.decode())
        assert not db._slots.idle, "the slot went back while the body was still being sent"
    # the body is out: the slot is back (for the next request), the invocation ends at close()
    assert len(db._slots.idle) == 1
    result.close()
    assert len(db._slots.idle) == 1
    numbers = {line.split(":")[2] for line in "".join(chunks).split()}
    pids = {line.split(":")[1] for line in "".join(chunks).split()}
    assert numbers == {"1"} and len(pids) == 1  # one invocation, one connection
    assert db.stats()["invocations"] == 1
    result.close()  # (twice: nothing more)
    assert db.stats()["invocations"] == 1
    # nothing of the invocation is left in this (the server's) thread
    assert db._current.get() is None


def test_exceptions_end_the_invocation(make_db, fw_pg):
    db = make_db(fw_pg.dsn, driver="psycopg", max_per_instance=1, acquire_timeout=2)

    def raising_app(environ: dict[str, Any], start_response: Any) -> Any:
        with db.connection() as conn:
            conn.execute("SELECT txid_current()")
        with db.connection() as conn:
            conn.execute("SELECT txid_current()")
            raise ValueError("in the app")

    def raising_body(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        with db.connection() as conn:
            conn.execute("SELECT 1")
            yield b"first"
            conn.execute("SELECT txid_current()")
            raise ValueError("in the body")

    server = Server(db.wsgi(raising_app))
    for _ in range(5):
        with pytest.raises(ValueError, match="in the app"):
            server.call("/")
        assert len(db._slots.idle) == 1
    body_server = Server(db.wsgi(raising_body))
    for _ in range(5):
        result = body_server.call("/")
        it = iter(result)
        assert next(it) == b"first"
        with pytest.raises(ValueError, match="in the body"):
            next(it)
        result.close()
        assert len(db._slots.idle) == 1
    assert db.stats()["connects"] == 1
    assert open_transactions(fw_pg) == 0


def test_a_response_never_closed_does_not_keep_the_slot(make_db, fw_pg):
    import gc

    db = make_db(fw_pg.dsn, driver="psycopg", max_per_instance=1)
    server = Server(db.wsgi(flask_app(db)))
    result = server.call("/sync")
    list(result)
    del result  # a server that forgets close() (against PEP 3333)
    gc.collect()
    assert len(db._slots.idle) == 1


@pytest.mark.parametrize("driver", ["psycopg-async", "asyncpg"])
def test_async_driver_is_a_config_error(make_db, fw_pg, driver):
    db = make_db(fw_pg.dsn, driver=driver)
    with pytest.raises(lambdapool.ConfigError, match=r"driver='psycopg'.*db\.asgi\(\)"):
        db.wsgi(flask_app(db))


def test_flask_under_functions_framework_with_cloud_function(monkeypatch, route):
    try:
        import functions_framework
    except ImportError as exc:
        missing("functions-framework", str(exc))
    monkeypatch.setenv("LAMBDAPOOL_DSN", route.dsn)
    monkeypatch.setenv("LAMBDAPOOL_POOLER", route.pooler)
    monkeypatch.delitem(sys.modules, "main", raising=False)
    app = functions_framework.create_app(target="query", source=str(APPS / "cloud_fn.py"))
    client = app.test_client()
    pids = set()
    try:
        for _ in range(REQUESTS):
            response = client.get("/")
            assert response.status_code == 200, response.get_data(as_text=True)
            assert response.json["clean"]
            pids.add(response.json["pid"])
        stats = client.get("/stats").json
        assert stats["connects"] == 1 and stats["invocations"] == REQUESTS + 1, stats
        for _ in range(2):
            route.kill_backends()
            response = client.get("/")
            assert response.status_code == 200 and response.json["clean"]
        stats = client.get("/stats").json
        assert stats["connect_failures"] == 0
        if route.name == "direct":
            assert len(pids) == 1 and stats["reconnects"] == 2
        assert route.pins() == 0
        assert route.open_transactions() == 0
    finally:
        for module in list(sys.modules.values()):  # the target's module, loaded by functions-framework
            if getattr(module, "__file__", None) == str(APPS / "cloud_fn.py"):
                module.db.close()
