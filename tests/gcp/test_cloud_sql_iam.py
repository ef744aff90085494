"""CloudSqlIamToken: the access token and the user, from the metadata emulator over real HTTP (or
google-auth's application default credentials off Google Cloud), cached by the RDS token's rule."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import pytest

from lambdapool.credentials import CloudSqlIamToken
from lambdapool.credentials.gcp_metadata import LOGIN_SCOPE, metadata_host
from lambdapool.errors import AuthError, ConfigError
from lambdapool.testing import MetadataServer, free_port
from tests.core.test_secrets import reachable_text

EMAIL = "orders-fn@shop-prod.iam.gserviceaccount.com"


class Clock:
    """Wall time for the provider, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def metadata():
    with MetadataServer(email=EMAIL, token_ttl=3600) as server:
        yield server


def provider(server: MetadataServer, **kwargs) -> CloudSqlIamToken:
    return CloudSqlIamToken(environ={"GCE_METADATA_HOST": server.host}, **kwargs)


# -- which source --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({"GCE_METADATA_HOST": "127.0.0.1:8080"}, "127.0.0.1:8080"),
        ({"GCE_METADATA_ROOT": "10.0.0.1"}, "10.0.0.1"),  # google-auth's older name
        ({"K_SERVICE": "orders"}, "metadata.google.internal"),  # Cloud Run services and functions
        ({"CLOUD_RUN_JOB": "nightly"}, "metadata.google.internal"),
        ({"FUNCTION_TARGET": "handler"}, None),  # functions-framework sets it on a laptop too
        ({}, None),
    ],
)
def test_the_metadata_server_is_asked_only_where_the_environment_says(environ, expected):
    assert metadata_host(environ) == expected


# -- the metadata server path ----------------------------------------------------------------------


def test_token_and_user_come_from_the_metadata_server(metadata):
    creds = provider(metadata)
    secret = creds.get()
    assert metadata.token_status(secret.password) == "valid"
    assert secret.username == "orders-fn@shop-prod.iam" == metadata.db_user
    assert (metadata.token_requests, metadata.email_requests) == (1, 1)


def test_a_user_given_is_kept_and_the_email_never_fetched(metadata):
    secret = provider(metadata, user="reporting").get()
    assert secret.username == "reporting" and metadata.token_status(secret.password) == "valid"
    assert metadata.email_requests == 0


def test_the_login_scope_is_asked_for(metadata):
    import urllib.request

    from lambdapool.credentials.gcp_metadata import ACCOUNT_PATH

    # The emulator serves the scoped URL the provider asks for (as Cloud Run's server does).
    request = urllib.request.Request(
        f"http://{metadata.host}{ACCOUNT_PATH}/token?scopes={LOGIN_SCOPE}", headers={"Metadata-Flavor": "Google"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert set(json.load(answer)) == {"access_token", "expires_in", "token_type"}
    assert LOGIN_SCOPE == "https://www.googleapis.com/auth/sqlservice.login"


def test_a_token_is_reused_until_300_seconds_of_its_life_remain(metadata):
    clock = Clock()
    creds = provider(metadata, clock=clock)
    first = creds.get()
    clock.now += 3600 - 300 - 2  # expires_in was 3599 or 3600: still more than 300 s left
    assert creds.get() is first and metadata.token_requests == 1
    clock.now += 4  # now less than 300 s left (counted from before the fetch)
    creds.get()
    assert metadata.token_requests == 2 and creds.fetches == 2
    assert metadata.email_requests == 1  # the account's email is fetched once


def test_the_lifetime_is_the_servers_expires_in():
    clock = Clock()
    with MetadataServer(email=EMAIL, token_ttl=1000) as server:
        creds = provider(server, clock=clock)
        creds.get()
        clock.now += 1000 - 300 - 2
        creds.get()
        assert server.token_requests == 1
        clock.now += 4
        creds.get()
        assert server.token_requests == 2


def test_invalidate_fetches_anew(metadata):
    creds = provider(metadata)
    first = creds.get()
    metadata.revoke(first.password)
    creds.invalidate()
    second = creds.get()
    assert second.password != first.password and metadata.token_status(second.password) == "valid"
    assert metadata.token_requests == 2


def test_threads_at_a_cold_start_fetch_once(metadata):
    creds = provider(metadata)
    barrier = threading.Barrier(8)
    got = []

    def worker():
        barrier.wait()
        got.append(creds.get().password)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and len(got) == 8
    assert metadata.token_requests == 1


def test_tasks_at_a_cold_start_fetch_once(metadata):
    creds = provider(metadata)

    async def main():
        return await asyncio.gather(*(creds.aget() for _ in range(8)))

    secrets = asyncio.run(main())
    assert len({s.password for s in secrets}) == 1
    assert metadata.token_requests == 1 and creds.fetches == 1


def test_a_brief_outage_is_retried(metadata):
    metadata.fail(status=503, times=2)
    secret = provider(metadata, user="app").get()  # third attempt
    assert metadata.token_status(secret.password) == "valid"


def test_a_lasting_outage_is_an_auth_error_that_names_the_status(metadata):
    metadata.fail(status=503)
    with pytest.raises(AuthError, match="HTTP 503") as info:
        provider(metadata, user="app").get()
    assert "metadata server" in str(info.value) and metadata.host in str(info.value)


def test_a_refusal_is_not_retried(metadata):
    metadata.fail(status=403)
    with pytest.raises(AuthError, match="HTTP 403.*service account"):
        provider(metadata, user="app").get()
    metadata.recover()
    metadata.fail(status=403, times=1)  # one refusal only: had it been retried, this would pass
    with pytest.raises(AuthError, match="HTTP 403"):
        provider(metadata, user="app").get()


def test_an_unreachable_metadata_server_names_the_fix():
    creds = CloudSqlIamToken(user="app", environ={"GCE_METADATA_HOST": f"127.0.0.1:{free_port()}"})
    with pytest.raises(AuthError) as info:
        creds.get()
    text = str(info.value)
    assert "GCE_METADATA_HOST" in text and "lambdapool[gcp]" in text and "ConnectionRefusedError" in text


def test_no_token_in_reprs_or_errors(metadata):
    creds = provider(metadata)
    token = creds.get().password
    assert token.startswith("ya29.")
    assert token not in repr(creds) and token not in repr(creds.get()) and token not in str(creds.get())
    metadata.fail(status=500)
    creds.invalidate()
    error = _error_of(creds)
    assert isinstance(error, AuthError) and token not in reachable_text(error)


def _error_of(creds: CloudSqlIamToken) -> BaseException:
    """The fetch's error, caught in a frame whose locals hold no token."""
    try:
        creds.get()
    except Exception as error:
        return error
    raise AssertionError("the fetch did not fail")


# -- application default credentials (off Google Cloud) ---------------------------------------------


class TokenEndpoint:
    """An OAuth2 token endpoint (and tokeninfo) over real HTTP, shaped as Google's answer:
    https://developers.google.com/identity/protocols/oauth2/service-account#httprest (token),
    https://developers.google.com/identity/sign-in/web/backend-auth (tokeninfo's email)."""

    def __init__(self, email: str) -> None:
        import http.server

        self.email, self.tokens, self.grants = email, [], []
        self.refusal: dict | None = None  # set: every grant is refused with this body (HTTP 400)
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                endpoint.grants.append(body.split("grant_type=", 1)[1].split("&", 1)[0])
                if endpoint.refusal is not None:
                    return self._send(endpoint.refusal, 400)
                token = f"ya29.adc-{len(endpoint.tokens)}"
                endpoint.tokens.append(token)
                self._send({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

            def do_GET(self):  # tokeninfo?access_token=...
                known = any(f"access_token={t}" in self.path for t in endpoint.tokens)
                self._send({"email": endpoint.email} if known else {"error": "invalid_token"}, 200 if known else 400)

            def _send(self, data, status=200):
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def no_google_environment(monkeypatch):
    pytest.importorskip("google.auth", reason="google-auth is in the [gcp] and [dev] extras")
    for name in ("GCE_METADATA_HOST", "GCE_METADATA_ROOT", "K_SERVICE", "CLOUD_RUN_JOB", "CLOUDSDK_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    # google-auth pings the metadata server when nothing else gives credentials: never here
    monkeypatch.setenv("NO_GCE_CHECK", "True")


def service_account_file(tmp_path, token_uri: str, email: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    info = {
        "type": "service_account",
        "project_id": "shop-dev",
        "private_key_id": "0" * 40,
        "private_key": pem.decode(),
        "client_email": email,
        "client_id": "1",
        "token_uri": token_uri,
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    return str(path)


def test_a_service_account_key_gives_the_token_and_user_through_google_auth(
    tmp_path, monkeypatch, no_google_environment
):
    endpoint = TokenEndpoint(EMAIL)
    try:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", service_account_file(tmp_path, endpoint.url, EMAIL))
        clock = Clock()
        creds = CloudSqlIamToken(clock=clock, environ={})
        secret = creds.get()
        assert secret.password == endpoint.tokens[0] and secret.username == "orders-fn@shop-prod.iam"
        assert endpoint.grants == ["urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"]
        assert creds.get() is secret  # cached
        assert "application default credentials" in repr(creds)
    finally:
        endpoint.close()


def _refresh_error() -> Exception:
    """The error of a fetch from application default credentials, caught in a frame whose
    locals hold nothing of the token endpoint's answer."""
    try:
        CloudSqlIamToken(environ={}).get()
    except Exception as error:
        return error
    raise AssertionError("the fetch did not fail")


def test_a_refused_refresh_is_an_auth_error_that_keeps_nothing_of_the_answer(
    tmp_path, monkeypatch, no_google_environment
):
    endpoint = TokenEndpoint(EMAIL)
    endpoint.refusal = {"error": "invalid_grant", "error_description": "Invalid JWT Signature Qx7-ANSWER-MARK"}
    try:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", service_account_file(tmp_path, endpoint.url, EMAIL))
        error = _refresh_error()
    finally:
        endpoint.close()
    assert isinstance(error, AuthError), error
    assert "refreshing application default credentials failed (RefreshError)" in str(error)
    # google-auth's exception quotes the endpoint's answer: it is neither chained nor kept as context
    assert error.__cause__ is None and error.__context__ is None
    assert "ANSWER-MARK" not in reachable_text(error)


def test_a_user_account_is_its_full_email(tmp_path, monkeypatch, no_google_environment):
    from lambdapool.credentials import gcp_metadata

    endpoint = TokenEndpoint("dev@example.com")
    try:
        path = tmp_path / "adc.json"
        path.write_text(json.dumps({"type": "authorized_user", "client_id": "c", "client_secret": "s",
                                    "refresh_token": "r"}))  # fmt: skip
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
        # Google's token and tokeninfo endpoints, at the stand-in's address (google-auth takes a
        # user account's token endpoint from its own constant, whatever the file says)
        import google.oauth2.credentials

        monkeypatch.setattr(google.oauth2.credentials, "_GOOGLE_OAUTH2_TOKEN_ENDPOINT", endpoint.url + "/token")
        monkeypatch.setattr(gcp_metadata, "TOKENINFO_URL", endpoint.url + "/tokeninfo")
        secret = CloudSqlIamToken(environ={}).get()
        assert secret.username == "dev@example.com" and secret.password == endpoint.tokens[0]
        assert endpoint.grants == ["refresh_token"]
    finally:
        endpoint.close()


def test_no_application_default_credentials_is_a_config_error(tmp_path, monkeypatch, no_google_environment):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="application-default login"):
        CloudSqlIamToken(environ={}).get()


def test_without_google_auth_the_error_says_what_to_install():
    code = (
        "import sys; sys.modules['google.auth'] = None\n"  # as if google-auth were not installed
        "from lambdapool.credentials import CloudSqlIamToken\n"
        "from lambdapool.errors import ConfigError\n"
        "try:\n    CloudSqlIamToken(environ={}).get()\n"
        "except ConfigError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'lambdapool[gcp]'" in out.stdout, out.stderr
