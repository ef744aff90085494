"""`lambdapool check --platform gcp` against a local HTTP server that answers as Google's APIs do.

The responses are shaped as Google's API reference documents them:
- Cloud Functions v2, projects.locations.functions (get, list): the Function resource,
  https://cloud.google.com/functions/docs/reference/rest/v2/projects.locations.functions#Function
  (``serviceConfig.maxInstanceCount``, ``maxInstanceRequestConcurrency``, ``environmentVariables``);
- Cloud SQL Admin API v1, instances.get: the DatabaseInstance resource,
  https://cloud.google.com/sql/docs/postgres/admin-api/rest/v1/instances#DatabaseInstance
  (``settings.tier``, ``settings.databaseFlags``, ``settings.connectionPoolConfig``,
  ``connectionName``, ``ipAddresses``);
- errors as Google's JSON error body (``{"error": {"code", "message", "status"}}``).
Credentials are real google-auth: a service-account key file (a fresh RSA key) whose ``token_uri``
is this server, so google-auth signs a JWT and does a real OAuth2 JWT-bearer exchange against it
(the server verifies the signature) before any API call is authorized. (An ``authorized_user``
file cannot do this: google-auth always sends those to oauth2.googleapis.com.)
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lambdapool.tools.cli import main
from lambdapool.tools.testing.pytest_plugin import missing

TOKEN = "ya29.lambdapool-test-access-token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
PROJECT, REGION, INSTANCE = "demo-project", "europe-west1", "db"


def _function(name: str, max_instances: int | None, concurrency: int, env: dict[str, str]) -> dict[str, Any]:
    service: dict[str, Any] = {
        "service": f"projects/{PROJECT}/locations/{REGION}/services/{name}",
        "timeoutSeconds": 60,
        "availableMemory": "512M",
        "availableCpu": "1",
        "environmentVariables": env,
        "minInstanceCount": 0,
        "ingressSettings": "ALLOW_ALL",
        "uri": f"https://{name}-abc123-ew.a.run.app",
        "serviceAccountEmail": f"lp-fn@{PROJECT}.iam.gserviceaccount.com",
        "allTrafficOnLatestRevision": True,
        "revision": f"{name}-00001-xyz",
        "maxInstanceRequestConcurrency": concurrency,
        "securityLevel": "SECURE_ALWAYS",
    }
    if max_instances is not None:
        service["maxInstanceCount"] = max_instances
    return {
        "name": f"projects/{PROJECT}/locations/{REGION}/functions/{name}",
        "buildConfig": {"runtime": "python312", "entryPoint": "handler"},
        "serviceConfig": service,
        "state": "ACTIVE",
        "updateTime": "2026-12-01T10:00:00.000000000Z",
        "environment": "GEN_2",
        "url": f"https://{REGION}-{PROJECT}.cloudfunctions.net/{name}",
    }


def _env(max_per_instance: int, pooler: str = "cloud-sql") -> dict[str, str]:
    return {
        "LAMBDAPOOL_POOLER": pooler,
        "LAMBDAPOOL_IAM_AUTH": "true",
        "LAMBDAPOOL_MAX_PER_INSTANCE": str(max_per_instance),
        "LAMBDAPOOL_DSN": f"host=/cloudsql/{PROJECT}:{REGION}:{INSTANCE} port=5432 dbname=app user=lp-fn@{PROJECT}.iam",
    }


def _instance(max_connections: str | None = "200", pool: dict[str, Any] | None = None) -> dict[str, Any]:
    flags = [{"name": "cloudsql.iam_authentication", "value": "on"}]
    if max_connections is not None:
        flags.append({"name": "max_connections", "value": max_connections})
    settings: dict[str, Any] = {
        "kind": "sql#settings",
        "settingsVersion": "3",
        "tier": "db-custom-2-7680",
        "edition": "ENTERPRISE",
        "availabilityType": "ZONAL",
        "databaseFlags": flags,
        "ipConfiguration": {"ipv4Enabled": True, "sslMode": "ENCRYPTED_ONLY"},
    }
    if pool is not None:
        settings["tier"] = "db-perf-optimized-N-8"
        settings["edition"] = "ENTERPRISE_PLUS"
        settings["connectionPoolConfig"] = pool
    return {
        "kind": "sql#instance",
        "state": "RUNNABLE",
        "databaseVersion": "POSTGRES_17",
        "settings": settings,
        "project": PROJECT,
        "region": REGION,
        "name": INSTANCE,
        "connectionName": f"{PROJECT}:{REGION}:{INSTANCE}",
        "ipAddresses": [{"type": "PRIMARY", "ipAddress": "34.77.0.10"}],
        "instanceType": "CLOUD_SQL_INSTANCE",
        "backendType": "SECOND_GEN",
    }


class FakeGoogle(ThreadingHTTPServer):
    """OAuth2 token endpoint + Cloud Functions v2 + Cloud SQL Admin v1, from ``routes`` (path -> (status, body))."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, tuple[int, Any]] = {}
        self.public_key = b""  # PEM of the service account's key: assertions must verify against it
        self.refreshes = 0
        self.unauthorized: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/"


class _Handler(BaseHTTPRequestHandler):
    server: FakeGoogle

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # the token_uri: an OAuth2 JWT-bearer grant, as Google's token endpoint
        from urllib.parse import parse_qs

        from google.auth import exceptions, jwt

        form = {
            k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()).items()
        }
        try:
            if self.path != "/token" or form.get("grant_type") != JWT_BEARER:
                raise ValueError("unsupported grant")
            # google-auth signs for Google's token endpoint whatever token_uri it posts to
            jwt.decode(form["assertion"], certs=self.server.public_key, audience="https://oauth2.googleapis.com/token")
        except (ValueError, KeyError, exceptions.GoogleAuthError):
            self._send(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
            return
        self.server.refreshes += 1
        self._send(200, {"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"})

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.server.unauthorized.append(self.path)
            self._send(401, {"error": {"code": 401, "message": "Request is missing required authentication credential.",
                                       "status": "UNAUTHENTICATED"}})  # fmt: skip
            return
        status, body = self.server.routes.get(
            self.path,
            (
                404,
                {"error": {"code": 404, "message": f"Resource '{self.path}' was not found", "status": "NOT_FOUND"}},
            ),
        )
        self._send(status, body)


FUNCTIONS = f"/v2/projects/{PROJECT}/locations/{REGION}/functions"
INSTANCE_PATH = f"/v1/projects/{PROJECT}/instances/{INSTANCE}"


def _key() -> tuple[str, bytes]:
    """A fresh RSA key: (private PEM for the key file, public PEM for the token endpoint)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def _key_file(path, private_pem: str, token_uri: str) -> str:
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": "0123456789abcdef",
                "private_key": private_pem,
                "client_email": f"checker@{PROJECT}.iam.gserviceaccount.com",
                "client_id": "123456789012345678901",
                "token_uri": token_uri,
            }
        )
    )
    return str(path)


@pytest.fixture
def google(tmp_path, monkeypatch):
    try:
        import cryptography  # noqa: F401
        import google.auth  # noqa: F401
        import urllib3  # noqa: F401
    except ImportError:
        missing("google-auth, urllib3 and cryptography", "pip install 'lambdapool[dev]'")
    server = FakeGoogle()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    private, server.public_key = _key()
    monkeypatch.setenv(
        "GOOGLE_APPLICATION_CREDENTIALS", _key_file(tmp_path / "key.json", private, f"{server.url}token")
    )
    monkeypatch.setenv("CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDFUNCTIONS", server.url)
    monkeypatch.setenv("CLOUDSDK_API_ENDPOINT_OVERRIDES_SQL", server.url)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def check(capsys, *argv: str) -> tuple[int, str]:
    code = main(["check", "--platform", "gcp", "--project", PROJECT, "--region", REGION, "--instance", INSTANCE, *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_fitting_deployment_passes_with_the_arithmetic(google, capsys):
    # GIVEN a db-custom-2-7680 instance with max_connections 200 and a function 20 x 80 x 4
    google.routes[INSTANCE_PATH] = (200, _instance("200"))
    google.routes[f"{FUNCTIONS}/api"] = (200, _function("api", 20, 80, _env(4)))
    # WHEN check reads them
    code, out = check(capsys, "--function", "api")
    # THEN (20 + surge 2) x 4 = 88 of 195 usable fits, read through a real OAuth2 refresh
    assert code == 0, out
    assert "max_connections 200 (database flag)" in out
    assert "api (20 + surge 2) instances x 4 conn = 88 (direct)" in out
    assert "OK: the fan-out fits, 107 connection(s) to spare" in out
    assert google.refreshes == 1 and google.unauthorized == []
    assert TOKEN not in out and "PRIVATE KEY" not in out


def test_a_function_over_budget_fails_naming_it(google, capsys):
    # GIVEN the same instance, and a second function wider than what is left
    google.routes[INSTANCE_PATH] = (200, _instance("200"))
    google.routes[f"{FUNCTIONS}/api"] = (200, _function("api", 20, 80, _env(4)))
    google.routes[f"{FUNCTIONS}/worker"] = (200, _function("worker", 100, 1, _env(4)))
    code, out = check(capsys, "--function", "api", "--function", "worker")
    # THEN worker's (100 + 10) x 1 (its concurrency caps its 4 connections) overflows: exit 1 naming it
    assert code == 1, out
    assert "worker (100 + surge 10) instances x 1 conn = 110 (direct)" in out
    assert "FAIL: worker breaks the budget: over by 3; to fit, lower its max_instance_count from 100 to 97" in out


def test_discovery_finds_the_functions_whose_dsn_is_the_instance(google, capsys):
    # GIVEN three functions in the region, two on this instance's socket and one elsewhere
    google.routes[INSTANCE_PATH] = (200, _instance(None))  # no max_connections flag: the tier's default
    other = {**_env(4), "LAMBDAPOOL_DSN": "host=10.9.9.9 dbname=app"}
    google.routes[FUNCTIONS] = (
        200,
        {"functions": [_function("api", 10, 8, _env(4)), _function("other", 500, 8, other)], "nextPageToken": "p2"},
    )
    google.routes[f"{FUNCTIONS}?pageToken=p2"] = (200, {"functions": [_function("cron", 1, 1, _env(1))]})
    code, out = check(capsys)
    # THEN only api and cron count (both pages read), against Cloud SQL's default for 7.5 GiB
    assert code == 0, out
    assert "max_connections 200 (Cloud SQL's default for its memory)" in out
    assert "api (10 + surge 1) instances x 4 conn = 44 (direct)" in out
    assert "cron (1 + surge 1) instances x 1 conn = 2 (direct)" in out
    assert "other" not in out


def test_managed_pooling_counts_the_pools_not_the_clients(google, capsys):
    # GIVEN Managed Connection Pooling on, max_pool_size 100, 2 poolers, and a wide pooled function
    pool = {"connectionPoolingEnabled": True, "flags": [{"name": "max_pool_size", "value": "100"}], "poolerCount": 2}
    google.routes[INSTANCE_PATH] = (200, _instance("800", pool))
    env = {**_env(8, "cloud-sql-pooler"), "LAMBDAPOOL_DSN": "host=10.0.0.5 port=6432 dbname=app"}
    google.routes[f"{FUNCTIONS}/api"] = (200, _function("api", 300, 80, env))
    code, out = check(capsys, "--function", "api")
    # THEN the database sees 2 x 100, the function's 2640 connections are the pooler's clients
    assert code == 0, out
    assert "cloud-sql-pooler max_pool_size 100 x 2 pooler(s) (poolerCount) = 200" in out
    assert "client: api (300 + surge 30) instances x 8 conn = 2640 through cloud-sql-pooler" in out


def test_a_function_without_max_instances_fails(google, capsys):
    google.routes[INSTANCE_PATH] = (200, _instance("200"))
    google.routes[f"{FUNCTIONS}/api"] = (200, _function("api", None, 1, _env(1)))
    code, out = check(capsys, "--function", "api")
    assert code == 1
    assert "FAIL: api set(s) no maxInstanceCount" in out


def test_a_missing_function_is_a_clear_404(google, capsys):
    google.routes[INSTANCE_PATH] = (200, _instance("200"))
    code, out = check(capsys, "--function", "nope")
    assert code == 2
    assert f"read Cloud Run function 'nope' in {REGION}: not found (HTTP 404: Resource '{FUNCTIONS}/nope'" in out


def test_permission_denied_names_the_permission(google, capsys):
    message = f"Permission 'cloudsql.instances.get' denied on resource 'projects/{PROJECT}/instances/{INSTANCE}'."
    google.routes[INSTANCE_PATH] = (403, {"error": {"code": 403, "message": message, "status": "PERMISSION_DENIED"}})
    code, out = check(capsys, "--function", "api")
    assert code == 2
    assert f"read Cloud SQL instance '{INSTANCE}' of project {PROJECT}: permission denied (HTTP 403: {message})" in out
    assert "the credentials need cloudsql.instances.get" in out


def test_a_refused_token_exchange_is_reported_without_secrets(google, capsys, tmp_path, monkeypatch):
    # GIVEN a key file signed with a key the token endpoint does not know (a deleted key)
    other, _ = _key()
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", _key_file(tmp_path / "old.json", other, f"{google.url}token"))
    code, out = check(capsys, "--function", "api")
    # THEN the refusal is named, no API was called, and nothing of the key is printed
    assert code == 2
    assert "Google credentials could not be refreshed (invalid_grant: Invalid JWT Signature." in out
    assert google.refreshes == 0 and google.unauthorized == []
    assert "PRIVATE KEY" not in out and other.splitlines()[1] not in out


def test_no_credentials_is_a_clear_error(tmp_path, monkeypatch, capsys):
    try:
        import google.auth  # noqa: F401
    except ImportError:
        missing("google-auth", "pip install 'lambdapool[gcp]'")
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens there: no metadata server either
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud application default credentials
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{port}")
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{port}")
    code, out = check(capsys, "--function", "api")
    assert code == 2
    assert "no Google credentials: run `gcloud auth application-default login`" in out
