"""``ENGINE: "lambdapool.django"``: Django's own PostgreSQL backend on lambdapool's warm connection.

Each case runs Django in a subprocess (Django's settings are global to a process): the tiny
project in ``django_project/`` served over ASGI in-process (``get_asgi_application()`` under
``httpx.ASGITransport``, see ``drive.py``), with ``manage.py test`` run as Django's runner runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from lambdapool.testing import PostgresServer, wait_for
from lambdapool.tools.testing.pytest_plugin import missing
from tests.frameworks.conftest import PASSWORD, Route

try:
    import django  # noqa: F401
    import httpx  # noqa: F401
    import mangum  # noqa: F401
except ImportError as exc:
    missing(f"the django extra ({exc.name})", "pip install 'lambdapool[django,asgi]' httpx")

PROJECT = Path(__file__).parent / "django_project"
EXAMPLE = Path(__file__).parents[2] / "examples" / "django_app"
REPO = Path(__file__).parents[2]
TABLE = "CREATE TABLE IF NOT EXISTS app_item (id bigserial PRIMARY KEY, data jsonb NOT NULL, at timestamptz NOT NULL)"


def django_env(dsn: str, engine: str = "lambdapool.django", pooler: str = "direct", **extra: str) -> dict[str, str]:
    url = urlsplit(dsn)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMBDAPOOL_", "DJ_", "DJANGO_"))}
    env.update(
        DJ_ENGINE=engine, DJ_NAME=url.path.lstrip("/"), DJ_USER=url.username or "", DJ_PASSWORD=PASSWORD,
        DJ_HOST=url.hostname or "", DJ_PORT=str(url.port), DJ_POOLER=pooler,
        DJ_DSN=f"postgresql://{url.username}@{url.hostname}:{url.port}{url.path}",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    )  # fmt: skip
    env.update(extra)
    return env


@pytest.fixture
def direct(fw_pg: PostgresServer) -> Route:
    """The server itself, for cases where the route does not matter."""
    return Route("direct", fw_pg, fw_pg.dsn, "direct")


def drive(route: Route, paths: list[str], engine: str = "lambdapool.django", kill_before: tuple[int, ...] = (),
          **extra: str) -> dict[str, Any]:  # fmt: skip
    """Serve ``paths`` over ASGI in a fresh process; its responses, backends and stats."""
    route.pg.psql(TABLE + "; TRUNCATE app_item")
    plan = {"paths": paths, "kill_before": list(kill_before), "admin_dsn": route.pg.dsn}
    env = django_env(route.dsn, engine, route.pooler, **extra)
    child = subprocess.Popen([sys.executable, "drive.py", json.dumps(plan)], cwd=PROJECT, env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert child.stdin is not None and child.stdout is not None
        for line in child.stdout:
            if line.strip() != "KILL":
                break
            kill_between_requests(route)
            child.stdin.write("go\n")
            child.stdin.flush()
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err[-4000:]
    result: dict[str, Any] = json.loads(line)
    return result


def kill_between_requests(route: Route) -> None:
    """Terminate the server's backends; behind the local proxy, wait until it has seen them go
    (it replaces a dead backend when it notices, as RDS Proxy does)."""
    closed = route.proxy.stats()["backends_closed"] if route.proxy is not None else 0
    killed = route.kill_backends()
    assert killed >= 1
    if route.proxy is not None:
        proxy = route.proxy
        wait_for(lambda: proxy.stats()["backends_closed"] >= closed + killed,
                 "the local proxy to notice its backends were gone")  # fmt: skip


@pytest.mark.parametrize("atomic", [False, True], ids=["autocommit", "atomic_requests"])
def test_one_backend_per_process_survives_a_kill_and_leaves_nothing_open(route: Route, atomic: bool) -> None:
    paths = ["state"] * 50 + ["state"] * 3 + ["item", "left_open", "count", "state", "fail", "count", "state"]
    result = drive(route, paths, kill_before=(50,), DJ_ATOMIC="1" if atomic else "0")
    responses = result["responses"]
    statuses = [r["status"] for r in responses]
    assert statuses == [200] * 57 + [500, 200, 200], statuses  # only the view that raises fails
    # 50 requests, one connection made
    assert [r["connects"] for r in responses[:50]] == [1] * 50
    states = [r["body"] for r in responses if r["body"] and "pid" in r["body"]]
    if route.name == "direct":  # the server sees one backend per process (through a pooler, the pooler's)
        assert len({s["pid"] for s in states[:50]}) == 1
    # Django's session time zone in every request, and no request began inside a transaction
    assert {s["tz"] for s in states} == {"UTC"}
    # (under ATOMIC_REQUESTS the view's atomic block has lent the connection already: IDLE)
    assert all(s["before"] in (None, "IDLE") and s["xid"] is None for s in states)
    # the killed backend was replaced before any statement ran (no failed request)
    stats = result["stats"]
    if route.name == "direct":
        assert stats["reconnects"] == 1 and stats["connects"] == 2
    assert stats["open_connections"] == 1
    # JSONField and an aware DateTimeField round-trip
    assert responses[53]["body"] == {
        "same": True,
        "aware": True,
        "found": True,
        "at": "2024-05-01T19:30:15.123456+00:00",
    }
    # a transaction a view left open is rolled back; a failing view's write only under ATOMIC_REQUESTS
    assert responses[55]["body"] == {"left": 0, "failed": 0}
    assert responses[58]["body"] == {"left": 0, "failed": 0 if atomic else 1}
    assert result["idle_in_transaction"] == 0
    if route.name == "direct":
        assert result["backends"] == 1
    assert route.pins() == 0  # nothing Django sends pins the session behind the local proxy


def test_plain_django_over_asgi_opens_a_backend_per_request(direct: Route) -> None:
    """The control: Django's own backend, with persistent connections, over ASGI."""
    result = drive(direct, ["state"] * 50, engine="django.db.backends.postgresql", DJ_CONN_MAX_AGE="none")
    pids = {r["body"]["pid"] for r in result["responses"]}
    assert len(pids) == 50  # a new backend for every request: each request context has its own wrapper
    assert result["backends"] > 1  # and the persistent ones are left open until garbage collected


def test_a_naive_custom_backend_breaks_on_djangos_queries(direct: Route) -> None:
    """The issue's bug: get_new_connection returning db.connection().__enter__() gives Django a
    connection without its cursor factory and adapters; lambdapool.django makes it as Django does."""
    naive = drive(direct, ["item", "state"], engine="naive")
    assert [r["status"] for r in naive["responses"]] == [500, 500]
    ours = drive(direct, ["item"])
    assert ours["responses"][0]["status"] == 200 and ours["responses"][0]["body"]["same"] is True


def test_manage_py_test_creates_and_drops_the_test_database(direct: Route) -> None:
    env = django_env(direct.dsn)
    done = subprocess.run([sys.executable, "manage.py", "test", "app", "-v", "2", "--noinput"], cwd=PROJECT,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Ran 1 test" in done.stderr and "OK" in done.stderr
    assert "Destroying test database" in done.stderr
    name = "test_" + env["DJ_NAME"]
    assert direct.pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == "0"


def test_settings_errors_name_the_setting(direct: Route) -> None:
    code = """
import django
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from lambdapool.errors import ConfigError
settings.configure(USE_TZ=True, DATABASES={})
django.setup()
from lambdapool.django.base import DatabaseWrapper
def wrapper(options):
    return DatabaseWrapper({"ENGINE": "lambdapool.django", "NAME": "db", "USER": "u", "PASSWORD": "secret-pw",
        "HOST": "127.0.0.1", "PORT": "1", "OPTIONS": options, "ATOMIC_REQUESTS": False, "AUTOCOMMIT": True,
        "CONN_MAX_AGE": 0, "CONN_HEALTH_CHECKS": False, "TIME_ZONE": None, "TEST": {}}, "default")
for options, error in [({"lambdapool": "rds-proxy"}, ConfigError), ({"lambdapool": {"dsn": "x"}}, ConfigError),
                       ({"lambdapool": {"driver": "asyncpg"}}, ConfigError), ({"pool": True}, ImproperlyConfigured)]:
    try:
        w = wrapper(options)
        w.check_settings()
        w.lambdapool_database()
    except error as exc:
        assert "secret-pw" not in str(exc)
        print(type(exc).__name__, "|", exc)
    else:
        raise SystemExit(f"no error for {options}")
db = wrapper({"lambdapool": {"max_per_instance": 1, "ping_after_idle": 5}}).lambdapool_database()
assert db is wrapper({"lambdapool": {"max_per_instance": 1, "ping_after_idle": 5}}).lambdapool_database()
assert db is not wrapper({"lambdapool": {"max_per_instance": 2}}).lambdapool_database()
assert db.settings.max_per_instance == 1 and db.settings.ping_after_idle == 5
assert "secret-pw" not in repr(db) + repr(db.settings)
"""
    done = subprocess.run([sys.executable, "-c", code], env=django_env(direct.dsn), capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 4
    assert "OPTIONS']['lambdapool'] must be a dict" in lines[0]
    assert "may not set dsn" in lines[1] and "may not set driver" in lines[2]
    assert lines[3].startswith("ImproperlyConfigured") and "OPTIONS['pool']" in lines[3]


def test_example_app_serves_lambda_events(route: Route) -> None:
    """examples/django_app: its Lambda handler (Mangum over Django's ASGI app) for API Gateway events."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMBDAPOOL_", "DJANGO_"))}
    env.update(LAMBDAPOOL_DSN=route.dsn, LAMBDAPOOL_POOLER=route.pooler, PYTHONPATH=str(REPO))
    code = """
import json
from django.core.management import call_command
import handler
from django.db import connections
call_command("migrate", run_syncdb=True, verbosity=0)
connections.close_all()  # gives the connection back: outside a request nothing else does
event = {"version": "2.0", "rawPath": "/notes", "rawQueryString": "", "headers": {"host": "x"},
         "requestContext": {"http": {"method": "POST", "path": "/notes", "sourceIp": "1.2.3.4"}},
         "body": json.dumps({"text": "hi"}), "isBase64Encoded": False}
out = [handler.handler(event, None) for _ in range(20)]
import lambdapool.django
print(json.dumps({"statuses": [o["statusCode"] for o in out], "last": json.loads(out[-1]["body"]),
                  "stats": dict(lambdapool.django.database().stats())}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=EXAMPLE, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["statuses"] == [200] * 20
    assert result["last"]["count"] >= 20 and result["last"]["created_at"].endswith("+00:00")
    assert result["stats"]["invocations"] == 20 and result["stats"]["connects"] == 1
    assert route.pins() == 0


# -- one wrapper, one lend: failures inside connect, and second wrappers in one thread ----------
SCRIPT_PRELUDE = """
import gc, json, os
import django
from django.conf import settings
def alias(**options):
    return {"ENGINE": "lambdapool.django", "NAME": os.environ["DJ_NAME"], "USER": os.environ["DJ_USER"],
            "PASSWORD": os.environ["DJ_PASSWORD"], "HOST": os.environ["DJ_HOST"], "PORT": os.environ["DJ_PORT"],
            "OPTIONS": {"lambdapool": {"pooler": "direct", "acquire_timeout": 20}, **options}}
"""


def run_script(route: Route, code: str, **extra: str) -> dict[str, Any]:
    """Run ``code`` (after SCRIPT_PRELUDE) in a fresh process; the JSON object of its last line."""
    route.pg.psql("DROP TABLE IF EXISTS lend_t; CREATE TABLE lend_t (v int)")
    done = subprocess.run([sys.executable, "-c", SCRIPT_PRELUDE + code], env=django_env(route.dsn, **extra),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_connect_that_fails_after_the_lend_began_gives_the_connection_back(direct: Route) -> None:
    """Issue 19, bug 4: an error in connect after the lend began (here a connection_created
    receiver) must not leave the thread's session lent: closing inside atomic must still roll back,
    and the next connect must not find the session in a transaction (it failed setting the
    OPTIONS isolation level: "can't change 'isolation_level' now ... INTRANS")."""
    code = """
settings.configure(USE_TZ=True, DATABASES={"default": alias(isolation_level=4)})  # SERIALIZABLE
django.setup()
from django.db import connection, transaction
from django.db.backends.signals import connection_created
failures = []
def boom(sender, connection, **kw):
    if not failures:
        failures.append(1)
        raise RuntimeError("a receiver failed")
connection_created.connect(boom)
other = connection.copy()
try:
    other.connect()
except RuntimeError:
    pass
del other  # never closed, as code that saw its connect fail does
gc.collect()
out = {}
with transaction.atomic():  # the isolation level is set on the lent connection
    with connection.cursor() as cur:
        cur.execute("SHOW transaction_isolation")
        out["isolation"] = cur.fetchone()[0]
        cur.execute("INSERT INTO lend_t VALUES (1)")
    connection.close()  # closed inside a transaction: the server must roll it back
with connection.cursor() as cur:  # a fresh lend, with autocommit: no INTRANS error
    cur.execute("SELECT count(*) FROM lend_t")
    out["rows"] = cur.fetchone()[0]
    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'")
    out["idle_in_transaction"] = cur.fetchone()[0]
connection.close()
print(json.dumps(out))
"""
    result = run_script(direct, code)
    assert result == {"isolation": "serializable", "rows": 0, "idle_in_transaction": 0}
    assert direct.open_transactions() == 0


def test_a_second_wrapper_in_the_same_thread_gets_a_connection_of_its_own(direct: Route) -> None:
    """Issue 19, bug 5: connection.copy() (Django's test-database maintenance) and a second alias
    with the same settings (an audit log that commits on its own) each get their own session,
    inside a transaction of the first or not; inside an invocation too. With max_per_instance=1
    (AWS Lambda) a second wrapper fails at once, saying why, rather than waiting for itself."""
    code = """
settings.configure(USE_TZ=True, DATABASES={"default": alias(), "audit": alias()})
django.setup()
import lambdapool.django
from django.db import connection, connections, transaction
PID = "SELECT pg_backend_pid()"
def pid(wrapper):
    with wrapper.cursor() as cur:
        cur.execute(PID)
        return cur.fetchone()[0]
out = {}
try:
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("INSERT INTO lend_t VALUES (1)")
        copy = connection.copy()
        out["copy_pid_differs"] = pid(copy) != pid(connection)
        with transaction.atomic(using="audit"):
            with connections["audit"].cursor() as cur:
                cur.execute("INSERT INTO lend_t VALUES (2)")
        out["audit_pid_differs"] = pid(connections["audit"]) not in (pid(connection), pid(copy))
        copy.close()
        raise ZeroDivisionError
except ZeroDivisionError:
    pass
with connection.cursor() as cur:
    cur.execute("SELECT array_agg(v ORDER BY v) FROM lend_t")
    out["rows"] = cur.fetchone()[0]  # the audit row committed on its own, the other rolled back
connections.close_all()
db = lambdapool.django.database()
@db.lambda_handler
def handler(event, context):
    with transaction.atomic():
        first = pid(connection)
        return first != pid(connections["audit"]) and first == pid(connection)
out["in_invocation"] = handler({}, None)
connections.close_all()
print(json.dumps(out))
"""
    result = run_script(direct, code)
    assert result == {"copy_pid_differs": True, "audit_pid_differs": True, "rows": [2], "in_invocation": True}
    assert direct.open_transactions() == 0

    code = """
settings.configure(USE_TZ=True, DATABASES={"default": alias(), "audit": alias()})
django.setup()
import time
from django.db import connection, connections
from lambdapool.errors import LambdapoolError
copy = connection.copy()
copy.ensure_connection()
del copy  # garbage-collected unclosed: its slot comes back
gc.collect()
with connection.cursor() as cur:
    cur.execute("SELECT 1")
started = time.monotonic()
try:
    connections["audit"].ensure_connection()
except LambdapoolError as exc:
    out = {"error": str(exc), "seconds": time.monotonic() - started}
connection.close()
with connections["audit"].cursor() as cur:  # once the first is given back, the second has it
    cur.execute("SELECT 1")
connections.close_all()
print(json.dumps(out))
"""
    result = run_script(direct, code, LAMBDAPOOL_MAX_PER_INSTANCE="1")
    assert "DATABASES['audit']" in result["error"] and "max_per_instance=1" in result["error"]
    assert result["seconds"] < 5  # at once, not after acquire_timeout (20 s)
