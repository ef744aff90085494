"""IAM auth tokens signed without an AWS SDK: equal to boto3's byte for byte, keys from the
environment, a container credentials endpoint (a local http.server) or a profile, accepted by
the local proxy in IAM mode, and a cold start that imports neither boto3 nor aiobotocore.
"""

from __future__ import annotations

import asyncio
import datetime
import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambdapool import _aws as aws
from lambdapool.credentials import AwsKeys, AwsKeySource, IamAuthToken, db_auth_token
from lambdapool.errors import AuthError, ConfigError
from lambdapool.testing import LocalProxy
from lambdapool.tools.proxy.auth import AuthFailed, verify_iam_token

AKID, SECRET = "AKIASIGNERTEST000001", "signer-test/secret+key-Vq7"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjE//session+token/with=odd&chars"
REGION = "eu-west-1"
ROOT = Path(__file__).resolve().parents[2]
AWS_VARS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_DEFAULT_REGION",
)  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No AWS credentials anywhere (env, ~/.aws, instance metadata); a region."""
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    aws.reset_clients()
    yield
    aws.reset_clients()


@pytest.fixture
def env_keys(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AKID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)


def boto3_token(host: str, port: int, user: str, region: str, token: str | None, now: datetime.datetime) -> str:
    """What ``boto3.client("rds").generate_db_auth_token`` makes at ``now`` (botocore's clock frozen)."""
    import boto3
    import botocore.auth

    session = boto3.session.Session(
        aws_access_key_id=AKID, aws_secret_access_key=SECRET, aws_session_token=token, region_name=region
    )
    client = session.client("rds")
    frozen = now.replace(tzinfo=None)  # botocore reads naive UTC through botocore.auth.get_current_datetime
    original = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda remove_tzinfo=True: frozen  # type: ignore[assignment]
    try:
        made: str = client.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user, Region=region)
        return made
    finally:
        botocore.auth.get_current_datetime = original


def check(token: str, host: str, port: int, user: str, secret: str = SECRET, akid: str = AKID) -> None:
    verify_iam_token(token, hosts={host}, port=port, user=user, credentials={akid: secret}, region=REGION)


# -- the signature ------------------------------------------------------------------------------

CASES = [
    ("proxy.example", 5432, "app", REGION),
    ("orders.proxy-c1x2y3.eu-west-1.rds.amazonaws.com", 5432, "lambda_app", REGION),
    ("DB.Example.COM", 443, "app", "us-east-1"),  # lower-cased host header, https port dropped
    ("127.0.0.1", 80, "u", "ap-southeast-2"),
    ("10.0.0.7", 6543, "user with space+plus/slash@é", "us-gov-west-1"),
    ("[::1]", 5432, "app", "cn-north-1"),
    ("h", 1, "x" * 63, "eu-central-2"),
]


@pytest.mark.parametrize("token", [None, SESSION_TOKEN], ids=["no-session-token", "session-token"])
@pytest.mark.parametrize("host,port,user,region", CASES)
def test_token_equals_boto3_byte_for_byte(host: str, port: int, user: str, region: str, token: str | None) -> None:
    for now in (
        datetime.datetime(2026, 12, 2, 10, 11, 12, tzinfo=datetime.timezone.utc),
        datetime.datetime(2027, 1, 1, 0, 0, 0, tzinfo=datetime.timezone.utc),  # a day boundary
    ):
        ours = db_auth_token(host, port, user, region, AwsKeys(AKID, SECRET, token), now=now)
        assert ours == boto3_token(host, port, user, region, token, now)


def test_token_from_the_current_clock_passes_the_proxys_check_and_not_under_another_key(env_keys: None) -> None:
    token = IamAuthToken("proxy.example", 5432, "app").get().password
    check(token, "proxy.example", 5432, "app")
    with pytest.raises(AuthFailed, match="signature does not match"):
        check(token, "proxy.example", 5432, "app", secret="another-secret")


def test_session_token_from_the_environment_is_signed_in(env_keys: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    token = asyncio.run(IamAuthToken("proxy.example", 5432, "app").aget()).password
    assert "X-Amz-Security-Token=" in token
    check(token, "proxy.example", 5432, "app")


def test_half_a_key_pair_in_the_environment_names_the_missing_variable(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AKID)
    with pytest.raises(AuthError, match="AWS_SECRET_ACCESS_KEY is not set"):
        IamAuthToken("db", 5432, "app").get()


def test_keys_never_appear_in_reprs() -> None:
    keys = AwsKeys(AKID, SECRET, SESSION_TOKEN, expires=1.0, source="container endpoint")
    for text in (repr(keys), str(keys)):
        assert SECRET not in text and SESSION_TOKEN not in text and AKID not in text
    assert "container endpoint" in repr(keys)


# -- the container credentials endpoint -----------------------------------------------------------


class ContainerEndpoint:
    """A stand-in for the Lambda / ECS container credentials endpoint on 127.0.0.1."""

    def __init__(self, auth: str, keys: dict[str, Any]) -> None:
        self.auth, self.keys, self.requests = auth, keys, 0
        self.seen_auth: list[str | None] = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.requests += 1
                endpoint.seen_auth.append(self.headers.get("Authorization"))
                if self.path != "/creds":
                    return self._reply(404, {"message": "no such path"})
                if self.headers.get("Authorization") != endpoint.auth:
                    return self._reply(401, {"message": f"bad token; the keys are {SECRET}"})
                self._reply(200, endpoint.keys)

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/creds"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def container_keys(expires_in: float = 6 * 3600) -> dict[str, Any]:
    expiration = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=expires_in)
    return {
        "AccessKeyId": AKID, "SecretAccessKey": SECRET, "Token": SESSION_TOKEN,
        "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }  # fmt: skip


@pytest.fixture
def endpoint(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[ContainerEndpoint]:
    server = ContainerEndpoint("Bearer lambda-auth-token-Xy1", container_keys())
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", server.url)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", server.auth)
    try:
        yield server
    finally:
        server.close()


def test_container_endpoint_keys_sign_the_token_and_are_fetched_once(endpoint: ContainerEndpoint) -> None:
    source = AwsKeySource()
    first = IamAuthToken("proxy.example", 5432, "app", keys=source)
    token = first.get().password
    check(token, "proxy.example", 5432, "app")
    assert "X-Amz-Security-Token=" in token
    assert endpoint.seen_auth == [endpoint.auth]
    second = IamAuthToken("proxy.example", 5432, "other", keys=source)
    check(asyncio.run(second.aget()).password, "proxy.example", 5432, "other")
    assert endpoint.requests == 1 and source.fetches == 1, "keys are kept until shortly before they expire"


def test_container_keys_are_fetched_again_shortly_before_their_expiration(endpoint: ContainerEndpoint) -> None:
    now = [datetime.datetime.now(datetime.timezone.utc).timestamp()]
    source = AwsKeySource(clock=lambda: now[0])
    source.get()
    now[0] += 6 * 3600 - 16 * 60  # 16 minutes left: still kept
    source.get()
    assert endpoint.requests == 1
    now[0] += 2 * 60  # 14 minutes left: fetched again
    asyncio.run(source.aget())
    assert endpoint.requests == 2 and source.fetches == 2


def test_token_is_not_cached_past_its_keys_expiry(endpoint: ContainerEndpoint) -> None:
    endpoint.keys = container_keys(expires_in=5 * 60)  # less than a token's cache life
    source = AwsKeySource()
    provider = IamAuthToken("proxy.example", 5432, "app", keys=source)
    provider.get()
    provider.get()
    assert provider.fetches == 1  # still ~4 minutes of use in the keys
    endpoint.keys = container_keys(expires_in=30)  # within the margin: every connect signs anew
    provider.invalidate()
    provider.get()
    provider.get()
    assert provider.fetches == 3 and endpoint.requests == 3


def test_container_token_file_is_read_and_sent(endpoint: ContainerEndpoint, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    token_file = tmp_path / "token"
    token_file.write_text(endpoint.auth + "\n")
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "stale-token-ignored")
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))
    check(IamAuthToken("db", 5432, "app", keys=AwsKeySource()).get().password, "db", 5432, "app")
    assert endpoint.seen_auth == [endpoint.auth]


def test_container_endpoint_refusal_names_the_token_setting_and_quotes_nothing(
    endpoint: ContainerEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "wrong-token-Qz")
    for get in (lambda p: p.get(), lambda p: asyncio.run(p.aget())):
        with pytest.raises(AuthError, match="HTTP 401.*AWS_CONTAINER_AUTHORIZATION_TOKEN") as info:
            get(IamAuthToken("db", 5432, "app", keys=AwsKeySource()))
        assert SECRET not in str(info.value) and "wrong-token-Qz" not in str(info.value)
    assert endpoint.requests == 2, "a refused token is not retried"


def test_container_url_elsewhere_over_http_is_refused(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://attacker.example/creds")
    with pytest.raises(ConfigError, match="AWS_CONTAINER_CREDENTIALS_FULL_URI.*refused"):
        IamAuthToken("db", 5432, "app").get()


def test_async_container_fetch_leaves_the_event_loop_running(endpoint: ContainerEndpoint) -> None:
    slow = threading.Event()
    original = endpoint.server.RequestHandlerClass.do_GET  # type: ignore[attr-defined]

    def held(handler: Any) -> None:
        slow.wait(5)  # the endpoint answers only once the loop has shown it kept running
        original(handler)

    endpoint.server.RequestHandlerClass.do_GET = held  # type: ignore[attr-defined]

    async def main() -> str:
        fetch = asyncio.ensure_future(IamAuthToken("db", 5432, "app", keys=AwsKeySource()).aget())
        for _ in range(3):
            await asyncio.sleep(0.01)  # the loop turns while the fetch waits on the endpoint
        assert not fetch.done()
        slow.set()
        return (await fetch).password

    check(asyncio.run(main()), "db", 5432, "app")


# -- profiles (botocore's chain, the fallback) ------------------------------------------------------


@pytest.fixture
def profile(clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "credentials").write_text(f"[lp-test]\naws_access_key_id = {AKID}\naws_secret_access_key = {SECRET}\n")
    (tmp_path / "config").write_text(f"[profile lp-test]\nregion = {REGION}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "lp-test")
    aws.reset_clients()


def test_profile_keys_sign_the_token_sync_and_async(profile: None) -> None:
    provider = IamAuthToken("proxy.example", 5432, "app")
    check(provider.get().password, "proxy.example", 5432, "app")
    provider.invalidate()
    check(asyncio.run(provider.aget()).password, "proxy.example", 5432, "app")


def test_unknown_profile_is_a_config_error_naming_aws_profile(profile: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    aws.reset_clients()
    with pytest.raises(ConfigError, match="AWS_PROFILE"):
        IamAuthToken("db", 5432, "app").get()


def test_no_credentials_anywhere_says_how_to_provide_them(clean_env: None) -> None:
    provider = IamAuthToken("db", 5432, "app")
    for get in (provider.get, lambda: asyncio.run(provider.aget())):
        with pytest.raises(AuthError, match="execution role.*AWS_ACCESS_KEY_ID"):
            get()


# -- fresh processes: what a cold start imports ---------------------------------------------------

COLD = """
import sys, lambdapool
from lambdapool.credentials import IamAuthToken
sdks = lambda: sorted(m for m in ("boto3", "botocore", "aiobotocore") if m in sys.modules)
token = IamAuthToken("proxy.example", 5432, "app")
print(token.get().password)
import asyncio
token.invalidate()
print(asyncio.run(token.aget()).password)
print(sdks())
"""


def run_fresh(code: str, env: dict[str, str]) -> list[str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent/config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    }
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, env={**base, **env}, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def test_cold_start_with_environment_keys_imports_no_aws_sdk() -> None:
    sync_token, async_token, sdks = run_fresh(COLD, {"AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET})
    for token in (sync_token, async_token):
        check(token, "proxy.example", 5432, "app")
    assert sdks == "[]"


def test_cold_start_with_container_keys_imports_no_aws_sdk(endpoint: ContainerEndpoint) -> None:
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": endpoint.url, "AWS_CONTAINER_AUTHORIZATION_TOKEN": endpoint.auth}
    sync_token, async_token, sdks = run_fresh(COLD, env)
    for token in (sync_token, async_token):
        check(token, "proxy.example", 5432, "app")
    assert sdks == "[]" and endpoint.requests == 2  # invalidate() between the two drops the keys


def test_cold_start_with_a_profile_falls_back_to_botocore(tmp_path: Path) -> None:
    (tmp_path / "credentials").write_text(f"[lp]\naws_access_key_id = {AKID}\naws_secret_access_key = {SECRET}\n")
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"), "AWS_PROFILE": "lp"}
    sync_token, async_token, sdks = run_fresh(COLD, env)
    for token in (sync_token, async_token):
        check(token, "proxy.example", 5432, "app")
    assert sdks == "['aiobotocore', 'boto3', 'botocore']"


# -- end to end through the local proxy in IAM mode ---------------------------------------------

FIRST_ROW = """
import sys, lambdapool
db = lambdapool.Database({dsn!r}, pooler="local", iam_auth=True, driver={driver!r})
{body}
print(row, sorted(m for m in ("boto3", "botocore", "aiobotocore") if m in sys.modules))
db.close()
"""
BODIES = {
    "psycopg": "with db.connection() as conn:\n    row = conn.execute('SELECT current_user').fetchone()[0]",
    "asyncpg": (
        "import asyncio\n"
        "async def main():\n"
        "    async with db.connection() as conn:\n"
        "        return await conn.fetchval('SELECT current_user')\n"
        "row = asyncio.run(main())"
    ),
}


@pytest.fixture
def iam_proxy(pg_server: Any) -> Iterator[LocalProxy]:
    with LocalProxy(backend=pg_server.dsn, auth="iam", iam_credentials={AKID: SECRET}, region=REGION,
                    max_backends=2) as proxy:  # fmt: skip
        yield proxy


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_password_less_iam_connect_in_a_fresh_process(iam_proxy: LocalProxy, driver: str) -> None:
    dsn = f"postgresql://postgres@{iam_proxy.host}:{iam_proxy.port}/postgres"
    code = FIRST_ROW.format(dsn=dsn, driver=driver, body=BODIES[driver])
    (line,) = run_fresh(code, {"AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET})
    assert line == "postgres []", "the first row came back and no AWS SDK was imported"
    stats = iam_proxy.stats()
    assert stats["auth_failures"] == 0


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_token_accepted_by_the_local_proxy_in_process(iam_proxy: LocalProxy, env_keys: None, make_db: Any,
                                                      driver: str) -> None:  # fmt: skip
    db = make_db(f"postgresql://postgres@{iam_proxy.host}:{iam_proxy.port}/postgres", pooler="local",
                 iam_auth=True, driver=driver)  # fmt: skip
    if driver == "psycopg":
        with db.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    else:

        async def main() -> int:
            async with db.connection() as conn:
                value: int = await conn.fetchval("SELECT 1")
                return value

        assert asyncio.run(main()) == 1
    assert iam_proxy.stats()["auth_failures"] == 0
