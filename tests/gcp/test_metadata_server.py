"""``lambdapool.testing.MetadataServer``: Google's metadata server over real HTTP, as clients see it
(http.client, and google-auth's own compute-engine credentials)."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from lambdapool.errors import ConfigError
from lambdapool.testing import MetadataServer, wait_for
from lambdapool.tools.testing.pytest_plugin import missing

EMAIL = "orders-fn@shop-prod.iam.gserviceaccount.com"
TOKEN = "/computeMetadata/v1/instance/service-accounts/default/token"
FLAVOR = {"Metadata-Flavor": "Google"}


def get(server: MetadataServer, path: str, headers: dict[str, str] | None = FLAVOR) -> tuple[int, dict, bytes]:
    host, port = server.host.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def token(server: MetadataServer) -> dict:
    status, headers, body = get(server, TOKEN)
    assert status == 200 and headers["content-type"] == "application/json", body
    return json.loads(body)


@pytest.fixture
def server():
    with MetadataServer(email=EMAIL, token_ttl=3600) as server:
        yield server


def test_the_token_endpoint_answers_as_googles_does(server):
    answer = token(server)
    assert set(answer) == {"access_token", "expires_in", "token_type"}
    assert answer["token_type"] == "Bearer" and answer["access_token"].startswith("ya29.")
    assert 3590 <= answer["expires_in"] <= 3600
    assert server.token_status(answer["access_token"]) == "valid"
    assert (server.token_requests, server.tokens_issued) == (1, 1)


def test_the_same_token_is_handed_out_with_its_expiry_counting_down(server):
    first = token(server)
    # WHEN the function asks again later
    later = wait_for(lambda: (t := token(server))["expires_in"] < first["expires_in"] and t, "expires_in to go down")
    # THEN it gets the cached token, with less time left, as Google's server does
    assert later["access_token"] == first["access_token"] and server.tokens_issued == 1


def test_a_token_near_its_end_is_replaced_by_a_new_one():
    # GIVEN tokens of 3 s, replaced when they have 1 s left (a quarter of the ttl: Google's 5 min is longer)
    with MetadataServer(email=EMAIL, token_ttl=3) as server:
        assert server.refresh_margin == 0.75
        first = token(server)
        fresh = wait_for(lambda: (t := token(server))["access_token"] != first["access_token"] and t, "a new token")
        assert fresh["expires_in"] >= 2 and server.tokens_issued == 2
        wait_for(lambda: server.token_status(first["access_token"]) == "expired", "the first token to expire")
        assert server.token_status(fresh["access_token"]) == "valid"


def test_email_project_and_the_database_user(server):
    status, headers, body = get(server, "/computeMetadata/v1/instance/service-accounts/default/email")
    assert (status, body.decode(), headers["metadata-flavor"]) == (200, EMAIL, "Google")
    assert get(server, "/computeMetadata/v1/project/project-id")[2] == b"shop-prod"
    # the account may be named by its email as well as by "default"
    assert get(server, f"/computeMetadata/v1/instance/service-accounts/{EMAIL}/email")[2].decode() == EMAIL
    assert server.db_user == "orders-fn@shop-prod.iam" and server.email_requests == 2
    assert server.environ == {"GCE_METADATA_HOST": server.host, "GCE_METADATA_IP": server.host}


def test_requests_without_the_flavor_header_or_through_a_proxy_are_refused(server):
    for headers in (None, {"Metadata-Flavor": "google-ish"}, {**FLAVOR, "X-Forwarded-For": "10.0.0.1"}):
        status, answer_headers, _ = get(server, TOKEN, headers)
        assert (status, answer_headers["metadata-flavor"]) == (403, "Google"), headers
    assert server.token_requests == 0  # refused before the token was looked at


def test_the_root_answers_googles_ping_and_unknown_paths_are_404(server):
    status, headers, _ = get(server, "/")
    assert (status, headers["metadata-flavor"]) == (200, "Google")
    assert get(server, "/computeMetadata/v1/instance/service-accounts/other/token")[0] == 404
    assert get(server, "/computeMetadata/v1/instance/zone")[0] == 404
    host, port = server.host.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", TOKEN, body=b"", headers=FLAVOR)
    assert conn.getresponse().status == 405
    conn.close()


def test_fail_answers_the_next_fetches_with_an_error_then_recovers_by_itself(server):
    server.fail(503, times=2)
    assert [get(server, TOKEN)[0] for _ in range(2)] == [503, 503]
    assert token(server)["access_token"].startswith("ya29.")
    server.fail(500, times=1)  # the email fetch counts as well
    assert get(server, "/computeMetadata/v1/instance/service-accounts/default/email")[0] == 500
    assert get(server, TOKEN)[0] == 200


def test_fail_without_a_count_lasts_until_recover(server):
    server.fail()
    assert {get(server, TOKEN)[0] for _ in range(5)} == {503}
    assert server.tokens_issued == 0
    server.recover()
    assert get(server, TOKEN)[0] == 200 and server.tokens_issued == 1


def test_a_revoked_token_is_replaced_on_the_next_fetch(server):
    first = token(server)["access_token"]
    server.revoke(first)
    assert server.token_status(first) == "revoked"
    second = token(server)["access_token"]
    assert second != first and server.token_status(second) == "valid"
    # revoke() with no token: everything issued so far
    server.revoke()
    assert {server.token_status(t) for t in (first, second)} == {"revoked"}
    assert token(server)["access_token"] not in (first, second)


def test_revoking_a_token_never_issued_is_refused_without_echoing_it(server):
    forged = "ya29.forged-" + "x" * 40
    with pytest.raises(ConfigError) as info:
        server.revoke(forged)
    assert forged not in str(info.value)
    assert server.token_status(forged) == "unknown"


def test_expire_all_expires_every_token_now(server):
    first = token(server)["access_token"]
    server.expire_all()
    assert server.token_status(first) == "expired"
    fresh = token(server)
    assert fresh["access_token"] != first and fresh["expires_in"] >= 3590


def test_tokens_never_show_in_a_repr_or_on_the_console(server, capfd):
    issued = token(server)["access_token"]
    assert issued not in repr(server) and EMAIL in repr(server)
    out, err = capfd.readouterr()
    assert issued not in out + err and "GET" not in err  # no request lines logged


def test_concurrent_fetches_share_one_token(server):
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: token(server)["access_token"], range(64)))
    assert len(set(answers)) == 1 and server.token_requests == 64 and server.tokens_issued == 1


def test_stop_does_not_wait_for_a_kept_alive_client():
    server = MetadataServer(email=EMAIL).start()
    host, port = server.host.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    for _ in range(3):  # one connection, three requests: HTTP/1.1 keep-alive
        conn.request("GET", TOKEN, headers=FLAVOR)
        assert conn.getresponse().read()
    stopped = threading.Event()
    threading.Thread(target=lambda: (server.stop(), stopped.set()), daemon=True).start()
    assert stopped.wait(5), "stop() hung on a kept-alive connection"
    conn.close()
    with pytest.raises(ConfigError):
        _ = server.host


@pytest.mark.parametrize(
    "settings",
    [{"email": "orders-fn@shop-prod.example.com"}, {"email": "no-at-sign"}, {"token_ttl": 0}, {"listen": "nowhere"}],
)
def test_bad_settings_are_config_errors(settings):
    with pytest.raises(ConfigError):
        MetadataServer(**{"email": EMAIL, **settings})


GOOGLE_AUTH_CLIENT = """
import json, urllib.request
import urllib3
from google.auth import compute_engine
from google.auth.compute_engine import _metadata
from google.auth.transport.urllib3 import Request

request = Request(urllib3.PoolManager())
ping = _metadata.ping(request)
credentials = compute_engine.Credentials()
credentials.refresh(request)
import os
mine = urllib.request.Request(
    f"http://{os.environ['GCE_METADATA_HOST']}/computeMetadata/v1/instance/service-accounts/default/token",
    headers={"Metadata-Flavor": "Google"},
)
token = json.load(urllib.request.urlopen(mine))["access_token"]
print(json.dumps({"ping": ping, "same": token == credentials.token, "email": credentials.service_account_email}))
"""


def test_google_auths_compute_engine_credentials_work_against_it(server):
    if importlib.util.find_spec("google.auth") is None or importlib.util.find_spec("urllib3") is None:
        missing("google-auth", "pip install 'lambdapool[gcp]'")
    # google-auth reads GCE_METADATA_HOST when it is imported: a fresh interpreter, as a function's
    env = {**os.environ, **server.environ}
    done = subprocess.run(
        [sys.executable, "-c", GOOGLE_AUTH_CLIENT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"ping": True, "same": True, "email": EMAIL}
    assert server.tokens_issued == 1 and server.token_requests == 2  # google-auth's fetch, then ours: one token
