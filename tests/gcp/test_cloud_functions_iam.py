"""A Cloud Run function with Cloud SQL IAM login, end to end on a laptop.

Real parts only: functions-framework instances (``cloud_function_fleet``, frozen between
requests), the function's ``lambdapool.Database(dsn, pooler="cloud-sql", iam_auth=True)``
fetching its token over HTTP from a :class:`~lambdapool.testing.MetadataServer`
(``metadata_server``, handed to the instances as ``GCE_METADATA_HOST``), and the local proxy in
Cloud SQL IAM mode over TLS (``local_proxy(..., auth="cloud-sql-iam", metadata=server, tls=True)``)
in front of a real Postgres.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lambdapool.tools.waiting import wait_for

FUNCTION = Path(__file__).parent / "handlers" / "iam_function.py"
EMAIL = "orders-fn@shop-prod.iam.gserviceaccount.com"
DRIVERS = ["psycopg", "asyncpg"]


@pytest.fixture
def server(metadata_server):
    return metadata_server(EMAIL)


@pytest.fixture
def proxy(pg_server, local_proxy, server):
    return local_proxy(pg_server, auth="cloud-sql-iam", metadata=server, tls=True)


@pytest.fixture
def function(cloud_function_fleet, proxy, server, tmp_path):
    """``function(driver, target="http_fn", metadata=server, ...)``: a started fleet of one instance."""

    def make(driver: str, target: str = "http_fn", metadata=None, **settings):  # type: ignore[no-untyped-def]
        # no user in the DSN: the function's database user comes from the metadata server's email
        dsn = f"postgresql://{proxy.host}:{proxy.port}/{proxy.settings.backend.database}"
        env = {"DRIVER": driver, "DATABASE_URL": dsn, "RESULTS_FILE": str(tmp_path / "events.jsonl")}
        return cloud_function_fleet(f"{FUNCTION}:{target}", env=env, metadata=metadata or server, **settings)

    return make


@pytest.mark.parametrize("signature", ["http", "cloudevent"])
@pytest.mark.parametrize("driver", DRIVERS)
def test_the_function_logs_in_with_its_token_and_keeps_the_connection_warm(
    function, server, proxy, driver, signature, tmp_path
):
    target = "http_fn" if signature == "http" else "event_fn"
    fleet = function(driver, target, signature=signature)
    results = [fleet.invoke({"n": n}) for n in range(3)]
    assert all(r.ok for r in results), [(r.error_type, r.error_message) for r in results]
    if signature == "http":
        seen = [r.payload for r in results]
    else:  # a CloudEvent function answers nothing: it wrote down what it saw
        lines = (tmp_path / "events.jsonl").read_text().splitlines()
        seen = [json.loads(line) for line in lines]
        assert [s["id"] for s in seen] == [r.request_id for r in results]
    # THEN one instance, one login (with the metadata server's token, over TLS), reused warm
    assert len({s["pid"] for s in seen}) == 1 and [s["cold_start"] for s in seen] == [True, False, False]
    assert [s["value"] for s in seen] == [1, 1, 1]
    assert [(s["connects"], s["reuses"]) for s in seen] == [(1, 0), (1, 1), (1, 2)]
    assert server.tokens_issued == 1 and server.email_requests >= 1
    stats = proxy.stats()
    assert stats["auth_failures"] == 0 and stats["clients"] == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_revoked_token_is_refreshed_once_when_the_connection_is_dropped(function, server, proxy, driver):
    fleet = function(driver)
    first = fleet.invoke({})
    assert first.ok, first.error_message
    # WHEN every token so far is revoked and the proxy drops its clients while the instance is frozen
    server.revoke()
    assert proxy.drop_clients() == 1
    wait_for(lambda: proxy.stats()["clients"] == 0, "the proxy to drop its client")
    second = fleet.invoke({})
    # THEN the reconnect's login with the cached token is refused, a new token is fetched once, and it works
    # (once in a loaded CI run, asyncpg: "connection was closed in the middle of operation" on the
    # handler's statement, not reproduced since: the trace and the proxy's counters say where, if again)
    assert second.ok, (second.error_type, second.error_message, second.error_trace, proxy.stats())
    assert (second.payload["connects"], second.payload["auth_refreshes"]) == (2, 1)
    assert server.tokens_issued == 2 and proxy.stats()["auth_failures"] == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_token_the_proxys_metadata_server_never_issued_is_an_auth_error(function, metadata_server, proxy, driver):
    # GIVEN the instance's metadata server is another one (same account): its tokens mean nothing here
    stranger = metadata_server(EMAIL)
    fleet = function(driver, metadata=stranger)
    result = fleet.invoke({})
    assert (result.ok, result.error_type) == (False, "AuthError"), result.error_message
    assert "Cloud SQL IAM service account authentication failed" in result.error_message
    assert "ya29." not in result.error_message + (result.error_trace or "")  # no token in the error
    # one login, one refresh, then the error: exactly two refusals
    assert proxy.stats()["auth_failures"] == 2 and stranger.token_requests == 2


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_revoked_token_with_the_metadata_server_down_is_an_auth_error(function, server, proxy, driver):
    fleet = function(driver)
    assert fleet.invoke({}).ok
    server.revoke()
    server.fail(503)  # until recover()
    assert proxy.drop_clients() == 1
    wait_for(lambda: proxy.stats()["clients"] == 0, "the proxy to drop its client")
    result = fleet.invoke({})
    assert (result.ok, result.error_type) == (False, "AuthError"), result.error_message
    assert "503" in result.error_message and "ya29." not in result.error_message + (result.error_trace or "")
    assert proxy.stats()["auth_failures"] == 1  # the cached token's login; the refresh never got a token
    # and once the metadata server is back, the next request logs in again
    server.recover()
    again = fleet.invoke({})
    assert again.ok, again.error_message
    assert server.tokens_issued == 2


# -- `lambdapool emulate --pooler cloud-sql --gce-metadata EMAIL` ---------------------------------
FROM_ENV = """
import json
import os
import urllib.request

import lambdapool

db = lambdapool.Database.from_env(driver="psycopg")  # LAMBDAPOOL_POOLER, LAMBDAPOOL_IAM_AUTH: from emulate


@db.cloud_function
def fn(request):
    if db.settings.pooler == "cloud-sql":
        with db.connection() as conn:
            return {"one": conn.execute("SELECT 1").fetchone()[0]}
    # any other pooler: the instance still has the run's metadata server
    ask = urllib.request.Request(
        f"http://{os.environ['GCE_METADATA_HOST']}/computeMetadata/v1/instance/service-accounts/default/email",
        headers={"Metadata-Flavor": "Google"},
    )
    email = urllib.request.urlopen(ask, timeout=5).read().decode()
    if email != os.environ["EXPECTED_EMAIL"]:
        raise RuntimeError(f"the metadata server says {email}")
    return {"email": email}
"""


def emulate(capsys, pg_server, tmp_path, *args: str) -> tuple[int, str, dict]:
    import importlib.util

    from lambdapool.tools.cli import main
    from lambdapool.tools.testing.pytest_plugin import missing

    if importlib.util.find_spec("functions_framework") is None:
        missing("functions_framework", "pip install 'lambdapool[gcp]'")
    app = tmp_path / "main.py"
    app.write_text(FROM_ENV)
    figures = tmp_path / "out.json"
    code = main(["emulate", f"{app}:fn", "--dsn", pg_server.dsn, "--concurrency", "2", "--invocations", "6",
                 "--env", f"EXPECTED_EMAIL={EMAIL}", "--json", str(figures), *args])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err + out
    return code, err, json.loads(figures.read_text())


def test_emulate_runs_a_cloud_sql_iam_function_through_the_proxy(capsys, pg_server, tmp_path):
    _, err, doc = emulate(capsys, pg_server, tmp_path, "--pooler", "cloud-sql", "--gce-metadata", EMAIL)
    assert f"metadata server for {EMAIL} (database user orders-fn@shop-prod.iam): GCE_METADATA_HOST=" in err
    scenario = doc["scenarios"]["cloud-sql"]
    summary = scenario["summary"]
    assert (summary["invocations"], summary["failures"]) == (6, 0) and scenario["errors"] == [], scenario["errors"]
    # each instance logged in once (a token the proxy took) and then reused its connection
    assert 1 <= summary["connects"] <= summary["instances"]


def test_emulate_gives_any_pooler_the_runs_metadata_server(capsys, pg_server, tmp_path):
    _, err, doc = emulate(capsys, pg_server, tmp_path, "--pooler", "direct", "--gce-metadata", EMAIL)
    assert "GCE_METADATA_HOST=" in err
    assert doc["scenarios"]["direct"]["summary"]["failures"] == 0, doc["scenarios"]["direct"]["errors"]


def test_emulate_refuses_an_email_that_is_not_a_service_accounts(capsys, tmp_path):
    from lambdapool.tools.cli import main

    app = tmp_path / "main.py"
    app.write_text(FROM_ENV)
    code = main(["emulate", f"{app}:fn", "--platform", "gcp", "--gce-metadata", "someone@example.com"])
    assert code == 2 and "NAME@PROJECT.iam.gserviceaccount.com" in capsys.readouterr().err
