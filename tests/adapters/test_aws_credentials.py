"""The AWS look-ups against moto: RDS Proxy by name, IAM tokens, Secrets Manager, and their errors.

Sync code (boto3) runs against moto in-process (``mock_aws``); async code (aiobotocore) against
moto's threaded server, since aiobotocore does not work with the in-process mock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count

from lambdapool import _aws as aws
from lambdapool.credentials import (
    IamAuthToken,
    SecretsManagerSecret,
    aresolve_proxy_endpoint,
    resolve_proxy_endpoint,
)
from lambdapool.errors import AuthError, ConfigError, ConnectionUnavailable
from lambdapool.tools.testing.moto import reset_moto
from lambdapool.tools.testing.postgres import free_port

REGION = "eu-west-1"
PASSWORD = "pw-Kx81-not-in-any-message"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fake credentials and a region; nothing from ~/.aws or an instance role can leak in."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    aws.reset_clients()  # clients keep the credentials they were built with
    yield
    aws.reset_clients()


@pytest.fixture
def no_credentials(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")


@pytest.fixture
def mocked(aws_env: None) -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def moto_url(moto_server_url: str, aws_env: None) -> str:
    """The session's threaded moto server (the lambdapool plugin's), emptied for this test."""
    reset_moto(moto_server_url)
    return moto_server_url


def make_proxy(name: str, engine_family: str = "POSTGRESQL", endpoint_url: str | None = None) -> str:
    """Create an RDS Proxy (moto wants real subnets first); returns the endpoint moto gave it."""
    ec2 = aws.client("ec2", REGION, endpoint_url)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24")["Subnet"]["SubnetId"] for i in (1, 2)]
    proxy = aws.client("rds", REGION, endpoint_url).create_db_proxy(
        DBProxyName=name,
        EngineFamily=engine_family,
        Auth=[{"AuthScheme": "SECRETS", "IAMAuth": "REQUIRED"}],
        RoleArn="arn:aws:iam::123456789012:role/proxy",
        VpcSubnetIds=subnets,
    )
    return proxy["DBProxy"]["Endpoint"]


def make_secret(fields: Any, endpoint_url: str | None = None, name: str = "prod/db") -> Any:
    """Create a secret (a dict is stored as JSON); returns the Secrets Manager client."""
    client = aws.client("secretsmanager", REGION, endpoint_url)
    text = fields if isinstance(fields, str) else json.dumps(fields)
    client.create_secret(Name=name, SecretString=text)
    return client


RDS_SECRET = {
    "username": "app", "password": PASSWORD, "host": "db.example", "port": 5432,
    "dbname": "appdb", "engine": "postgres",
}  # fmt: skip


def assert_no_leak(exc: BaseException, *secrets: str) -> None:
    """Neither the message nor anything in the printed traceback chain shows a secret."""
    text = "".join(traceback.format_exception(exc))
    for secret in secrets:
        assert secret not in text


# -- RDS Proxy endpoint by name ---------------------------------------------------------------


def test_proxy_is_found_by_name(mocked: None) -> None:
    endpoint = make_proxy("orders")
    make_proxy("other")
    assert resolve_proxy_endpoint("orders") == (endpoint, 5432)
    assert endpoint.startswith("orders.")


def test_proxy_is_found_by_name_async(moto_url: str) -> None:
    endpoint = make_proxy("orders", endpoint_url=moto_url)
    found = asyncio.run(aresolve_proxy_endpoint("orders", REGION, endpoint_url=moto_url))
    assert found == (endpoint, 5432)


def test_unknown_proxy_names_it_the_region_and_the_proxies_that_exist(mocked: None) -> None:
    make_proxy("orders")
    make_proxy("billing")
    with pytest.raises(ConfigError) as info:
        resolve_proxy_endpoint("order")
    message = str(info.value)
    assert message.startswith("proxy_name:")
    assert "'order'" in message and REGION in message
    assert "billing, orders" in message


def test_unknown_proxy_async_in_a_region_without_proxies(moto_url: str) -> None:
    with pytest.raises(ConfigError, match=r"no RDS Proxy named 'orders' in eu-west-1.*no RDS Proxy at all"):
        asyncio.run(aresolve_proxy_endpoint("orders", endpoint_url=moto_url))


def test_proxy_of_another_engine_is_refused(mocked: None) -> None:
    make_proxy("legacy", engine_family="MYSQL")
    with pytest.raises(ConfigError, match="engine family MYSQL.*POSTGRESQL"):
        resolve_proxy_endpoint("legacy")


# -- IAM auth tokens --------------------------------------------------------------------------

TOKEN_SHAPE = re.compile(
    r"^proxy\.example:5432/\?Action=connect&DBUser=app&X-Amz-Algorithm=AWS4-HMAC-SHA256&"
    r"X-Amz-Credential=testing%2F\d{8}%2Feu-west-1%2Frds-db%2Faws4_request&.*"
    r"X-Amz-Expires=900&.*X-Amz-Signature=[0-9a-f]{64}$"
)


def _token_is_reused_until_close_to_expiry(get: Callable[[IamAuthToken], Any]) -> None:
    clock = Clock()
    provider = IamAuthToken("proxy.example", 5432, "app", clock=clock)  # renew_before=300
    first = get(provider)
    assert TOKEN_SHAPE.match(first.password), first.password
    assert (first.username, first.host, first.port) == ("app", "proxy.example", 5432)

    clock.now += 599  # 301 s of the token's 900 s remain: still reused
    assert get(provider) is first
    assert provider.fetches == 1

    clock.now += 1  # 300 s remain: renewed
    renewed = get(provider)
    assert TOKEN_SHAPE.match(renewed.password)
    assert provider.fetches == 2
    clock.now += 100
    assert get(provider) is renewed and provider.fetches == 2


def test_iam_token_is_generated_once_and_renewed_before_expiry(aws_env: None) -> None:
    _token_is_reused_until_close_to_expiry(lambda provider: provider.get())


def test_iam_token_async_is_generated_once_and_renewed_before_expiry(aws_env: None) -> None:
    _token_is_reused_until_close_to_expiry(lambda provider: asyncio.run(provider.aget()))


def test_iam_tokens_pass_an_independent_sigv4_check(aws_env: None) -> None:
    # The local proxy verifies tokens as RDS does (its own SigV4 code): what boto3 and
    # aiobotocore sign for us must pass it, and fail it under another secret key.
    from lambdapool.tools.proxy.auth import AuthFailed, verify_iam_token

    provider = IamAuthToken("proxy.example", 5432, "app")
    sync_token = provider.get().password
    provider.invalidate()
    async_token = asyncio.run(provider.aget()).password
    check = {"hosts": {"proxy.example"}, "port": 5432, "user": "app", "region": REGION}
    for token in (sync_token, async_token):
        verify_iam_token(token, credentials={"testing": "testing"}, **check)
        with pytest.raises(AuthFailed, match="signature does not match"):
            verify_iam_token(token, credentials={"testing": "another-secret"}, **check)


def test_iam_token_sync_and_async_share_one_cache(aws_env: None) -> None:
    provider = IamAuthToken("proxy.example", 5432, "app")
    token = provider.get()
    assert asyncio.run(provider.aget()) is token
    provider.invalidate()
    assert TOKEN_SHAPE.match(asyncio.run(provider.aget()).password)
    assert provider.fetches == 2


def test_iam_tokens_reuse_one_boto3_client(aws_env: None) -> None:
    IamAuthToken("proxy.example", 5432, "app").get()
    kept = aws.client("rds", REGION)
    IamAuthToken("proxy.example", 5432, "other").get()
    assert aws.client("rds", REGION) is kept


def test_iam_token_without_aws_credentials_says_how_to_provide_them(no_credentials: None) -> None:
    provider = IamAuthToken("proxy.example", 5432, "app")
    for get in (provider.get, lambda: asyncio.run(provider.aget())):
        with pytest.raises(AuthError, match="AWS_ACCESS_KEY_ID.*execution role|execution role.*AWS_ACCESS_KEY_ID"):
            get()
    assert provider.fetches == 0


def test_iam_token_never_appears_in_repr_or_logs(aws_env: None, caplog: pytest.LogCaptureFixture) -> None:
    provider = IamAuthToken("proxy.example", 5432, "app")
    with caplog.at_level(logging.DEBUG, logger="lambdapool"):
        token = provider.get()
    signature = token.password.rsplit("=", 1)[1]
    assert "fetched" in caplog.text
    for text in (caplog.text, repr(provider), repr(token), str(token)):
        assert signature not in text


# -- Secrets Manager ---------------------------------------------------------------------------


def test_secret_is_read_once_and_cached_for_its_ttl(mocked: None) -> None:
    make_secret(RDS_SECRET)
    clock = Clock()
    provider = SecretsManagerSecret("prod/db", ttl=60, clock=clock)
    secret = provider.get()
    assert secret.password == PASSWORD
    assert (secret.username, secret.host, secret.port, secret.dbname) == ("app", "db.example", 5432, "appdb")
    clock.now += 59.9
    assert provider.get() is secret and provider.fetches == 1
    clock.now += 0.1
    assert provider.get() == secret and provider.fetches == 2


def test_rotation_is_seen_after_invalidate(mocked: None) -> None:
    client = make_secret(RDS_SECRET)
    provider = SecretsManagerSecret("prod/db")
    assert provider.get().password == PASSWORD

    client.put_secret_value(SecretId="prod/db", SecretString=json.dumps({**RDS_SECRET, "password": "new-pw"}))
    assert provider.get().password == PASSWORD  # cached: no API call per invocation
    provider.invalidate()
    assert provider.get().password == "new-pw"
    assert provider.get().password == "new-pw"
    assert provider.fetches == 2


def test_secret_async_is_cached_and_rotation_seen_after_invalidate(moto_url: str) -> None:
    client = make_secret(RDS_SECRET, moto_url)
    clock = Clock()
    provider = SecretsManagerSecret("prod/db", ttl=300, clock=clock, endpoint_url=moto_url)

    async def scenario() -> list[str]:
        seen = [(await provider.aget()).password for _ in range(3)]
        client.put_secret_value(SecretId="prod/db", SecretString=json.dumps({**RDS_SECRET, "password": "new-pw"}))
        seen.append((await provider.aget()).password)
        provider.invalidate()
        seen.append((await provider.aget()).password)
        clock.now += 300
        seen.append((await provider.aget()).password)
        return seen

    assert asyncio.run(scenario()) == [PASSWORD] * 4 + ["new-pw"] * 2
    assert provider.fetches == 3
    assert provider.get().password == "new-pw" and provider.fetches == 3  # one cache for both


def test_secret_port_given_as_a_string_is_a_number(mocked: None) -> None:
    make_secret({"password": PASSWORD, "port": "6432"})
    secret = SecretsManagerSecret("prod/db").get()
    assert secret.port == 6432 and secret.username is None


def test_unknown_secret_names_it_and_the_region(mocked: None) -> None:
    with pytest.raises(ConfigError) as info:
        SecretsManagerSecret("prod/dbb").get()
    assert str(info.value).startswith("secret_id:")
    assert "'prod/dbb'" in str(info.value) and REGION in str(info.value)


def test_unknown_secret_async(moto_url: str) -> None:
    provider = SecretsManagerSecret("prod/dbb", endpoint_url=moto_url)
    with pytest.raises(ConfigError, match="no secret 'prod/dbb' in eu-west-1"):
        asyncio.run(provider.aget())


def test_secret_the_caller_may_not_read_names_the_iam_permission(mocked: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # moto enforces IAM policies after the first N calls: the three setup calls run unchecked,
    # then a user without any policy reads the secret.
    @set_initial_no_auth_action_count(3)
    def scenario() -> None:
        iam = aws.client("iam", REGION)
        iam.create_user(UserName="no-rights")
        key = iam.create_access_key(UserName="no-rights")["AccessKey"]
        make_secret(RDS_SECRET)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        aws.reset_clients()
        with pytest.raises(AuthError) as info:
            SecretsManagerSecret("prod/db").get()
        message = str(info.value)
        assert "secretsmanager:GetSecretValue" in message and "'prod/db'" in message
        assert_no_leak(info.value, PASSWORD)

    scenario()


def test_credentials_aws_does_not_know_are_an_auth_error(mocked: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # RDS speaks the query protocol, whose error codes moto renders as AWS does.
    @set_initial_no_auth_action_count(0)
    def scenario() -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
        aws.reset_clients()
        with pytest.raises(AuthError, match="AWS rejected the credentials.*AWS_ACCESS_KEY_ID") as info:
            resolve_proxy_endpoint("orders")
        assert "InvalidClientTokenId" in str(info.value)

    scenario()


def test_unreachable_aws_endpoint_is_connection_unavailable(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused at once
    provider = SecretsManagerSecret("prod/db", endpoint_url=closed)
    for get in (provider.get, lambda: asyncio.run(provider.aget())):
        with pytest.raises(ConnectionUnavailable, match="did not answer.*VPC endpoint or a NAT gateway"):
            get()
    with pytest.raises(ConnectionUnavailable, match="look up RDS Proxy 'orders'"):
        resolve_proxy_endpoint("orders", endpoint_url=closed)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ({"username": "app", "host": "db"}, r'no "password" field'),
        ({**RDS_SECRET, "password": ""}, r'no "password" field'),
        (f"just-the-password {PASSWORD}", "not a JSON object"),
        (json.dumps([PASSWORD]), "not a JSON object"),
        ({**RDS_SECRET, "port": "five"}, "field 'port'"),
        ({**RDS_SECRET, "username": 7}, "field 'username'"),
    ],
    ids=["no-password", "empty-password", "not-json", "json-list", "bad-port", "bad-username"],
)
def test_malformed_secret_names_the_field_without_leaking(mocked: None, stored: Any, expected: str) -> None:
    make_secret(stored)
    provider = SecretsManagerSecret("prod/db")
    with pytest.raises(ConfigError, match=expected) as info:
        provider.get()
    assert "'prod/db'" in str(info.value)
    assert_no_leak(info.value, PASSWORD)
    assert provider.fetches == 0


def test_binary_secret_is_refused(mocked: None) -> None:
    aws.client("secretsmanager", REGION).create_secret(Name="prod/db", SecretBinary=PASSWORD.encode())
    with pytest.raises(ConfigError, match="SecretBinary"):
        SecretsManagerSecret("prod/db").get()


def test_secret_without_aws_credentials_says_how_to_provide_them(moto_url: str, no_credentials: None) -> None:
    provider = SecretsManagerSecret("prod/db", endpoint_url=moto_url)
    for get in (provider.get, lambda: asyncio.run(provider.aget())):
        with pytest.raises(AuthError, match="no AWS credentials.*AWS_ACCESS_KEY_ID"):
            get()


def test_secret_never_appears_in_repr_errors_or_logs(mocked: None, caplog: pytest.LogCaptureFixture) -> None:
    # botocore's own DEBUG log prints response bodies (secrets included): docs/credentials.md
    # warns against it; what lambdapool itself logs must never carry one.
    make_secret(RDS_SECRET)
    provider = SecretsManagerSecret("prod/db", ttl=0)
    with caplog.at_level(logging.DEBUG, logger="lambdapool"):
        secret = provider.get()
        provider.invalidate()
        provider.get()
    assert "fetched (fetch 2)" in caplog.text
    for text in (caplog.text, repr(provider), repr(secret), str(secret)):
        assert PASSWORD not in text


# -- A rotation against a real Postgres ---------------------------------------------------------


def _rotate(client: Any, server: Any, new_password: str) -> None:
    """The rotation Lambda's steps, done by hand (moto cannot run one): new value, then ALTER ROLE."""
    current = json.loads(client.get_secret_value(SecretId="prod/db")["SecretString"])
    client.put_secret_value(SecretId="prod/db", SecretString=json.dumps({**current, "password": new_password}))
    server.psql(f"ALTER ROLE postgres PASSWORD '{new_password}'")


def _pg_secret(server: Any) -> dict[str, Any]:
    return {"username": "postgres", "password": "old-pw", "host": server.host, "port": server.port,
            "dbname": "postgres", "engine": "postgres"}  # fmt: skip


def test_rotated_secret_is_rejected_then_refetched_once_and_connects(mocked: None, pg_factory) -> None:
    server = pg_factory(password="old-pw")
    client = make_secret(_pg_secret(server))
    provider = SecretsManagerSecret("prod/db")

    def connect() -> Any:
        s = provider.get()
        return psycopg.connect(host=s.host, port=s.port, user=s.username, password=s.password,
                               dbname=s.dbname, connect_timeout=5)  # fmt: skip

    with connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)

    _rotate(client, server, "new-pw")
    with pytest.raises(psycopg.OperationalError) as rejected:
        connect()  # the cached (old) secret
    # psycopg's connect errors carry no sqlstate: the server's message is the signal to re-fetch.
    assert "password authentication failed" in str(rejected.value)
    assert_no_leak(rejected.value, "old-pw", "new-pw")

    provider.invalidate()
    with connect() as conn:
        assert conn.execute("select current_user").fetchone() == ("postgres",)
    assert provider.fetches == 2


def test_rotated_secret_async_refetched_once_and_connects(moto_url: str, pg_factory) -> None:
    server = pg_factory(password="old-pw")
    client = make_secret(_pg_secret(server), moto_url)
    provider = SecretsManagerSecret("prod/db", endpoint_url=moto_url)

    async def connect() -> Any:
        s = await provider.aget()
        return await psycopg.AsyncConnection.connect(host=s.host, port=s.port, user=s.username,
                                                     password=s.password, dbname=s.dbname,
                                                     connect_timeout=5)  # fmt: skip

    async def scenario() -> None:
        await (await connect()).close()
        _rotate(client, server, "new-pw")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            await connect()
        provider.invalidate()
        conn = await connect()
        async with conn:
            assert await (await conn.execute("select 1")).fetchone() == (1,)

    asyncio.run(scenario())
    assert provider.fetches == 2
