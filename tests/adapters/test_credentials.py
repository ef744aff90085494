"""Credential providers without AWS calls: static, callables, the shared cache, settings, imports.

The AWS-backed providers against moto are in test_aws_credentials.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from lambdapool import _aws as aws
from lambdapool.credentials import (
    CredentialProvider,
    IamAuthToken,
    PasswordCallable,
    Secret,
    SecretsManagerSecret,
    StaticPassword,
    resolve_proxy_endpoint,
)
from lambdapool.errors import ConfigError

PASSWORD = "hunter2-Zq9"  # distinctive, so a leak is found by substring


@pytest.fixture
def no_region(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "LAMBDAPOOL_REGION"):
        monkeypatch.delenv(name, raising=False)


def test_secret_repr_and_str_hide_the_password() -> None:
    secret = Secret(password=PASSWORD, username="app", host="db", port=5432, dbname="app")
    assert PASSWORD not in repr(secret) and PASSWORD not in str(secret)
    assert "username='app'" in repr(secret)


def test_static_password_is_served_as_is_and_never_refreshed() -> None:
    provider = StaticPassword(PASSWORD)
    assert isinstance(provider, CredentialProvider)
    assert provider.get() == Secret(PASSWORD)
    assert asyncio.run(provider.aget()) == Secret(PASSWORD)
    provider.invalidate()
    assert provider.get().password == PASSWORD
    assert provider.can_refresh is False and provider.fetches == 0
    assert PASSWORD not in repr(provider)


@pytest.mark.parametrize("bad", ["", None, 42])
def test_static_password_must_be_a_non_empty_string(bad: object) -> None:
    with pytest.raises(ConfigError, match="password"):
        StaticPassword(bad)  # type: ignore[arg-type]


def test_password_callable_is_called_once_until_invalidated() -> None:
    calls = []

    def current_password() -> str:
        calls.append(1)
        return f"{PASSWORD}-{len(calls)}"

    provider = PasswordCallable(current_password)
    assert isinstance(provider, CredentialProvider) and provider.can_refresh
    assert [provider.get().password for _ in range(3)] == [f"{PASSWORD}-1"] * 3
    assert asyncio.run(provider.aget()).password == f"{PASSWORD}-1"  # one cache for both
    assert provider.fetches == 1 and len(calls) == 1

    provider.invalidate()
    assert provider.get().password == f"{PASSWORD}-2"
    assert provider.fetches == 2
    assert PASSWORD not in repr(provider) and "current_password" in repr(provider)


def test_password_callable_may_return_a_secret_with_the_user() -> None:
    provider = PasswordCallable(lambda: Secret(password=PASSWORD, username="app"))
    assert provider.get().username == "app"


def test_async_password_callable_is_awaited_and_cached() -> None:
    calls = []

    async def fetch_token() -> str:
        calls.append(1)
        await asyncio.sleep(0)
        return PASSWORD

    provider = PasswordCallable(fetch_token)

    async def twice() -> list[str]:
        return [(await provider.aget()).password for _ in range(2)]

    assert asyncio.run(twice()) == [PASSWORD, PASSWORD]
    assert len(calls) == 1 and provider.fetches == 1


def test_async_password_callable_in_sync_code_says_to_use_an_async_driver() -> None:
    async def fetch_token() -> str:
        return PASSWORD

    with pytest.raises(ConfigError, match="async driver"):
        PasswordCallable(fetch_token).get()


@pytest.mark.parametrize("returned", ["", None, b"bytes", Secret(password="")])
def test_password_callable_returning_no_password_is_a_config_error(returned: object) -> None:
    provider = PasswordCallable(lambda: returned)
    with pytest.raises(ConfigError, match="password") as info:
        provider.get()
    assert "<lambda>" in str(info.value)


def test_password_callable_rejects_a_non_callable() -> None:
    with pytest.raises(ConfigError, match="callable"):
        PasswordCallable(PASSWORD)  # type: ignore[arg-type]


def test_concurrent_threads_share_one_fetch() -> None:
    # Cloud Functions serves requests on threads: a burst at a cold cache must fetch once.
    started = threading.Event()

    def slow_password() -> str:
        started.set()
        time.sleep(0.05)
        return PASSWORD

    provider = PasswordCallable(slow_password)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(provider.get().password)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert results == [PASSWORD] * 8
    assert provider.fetches == 1


def test_region_comes_from_the_argument_then_aws_region_then_aws_default_region(
    monkeypatch: pytest.MonkeyPatch, no_region: None
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert aws.resolve_region() == "us-west-2"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert aws.resolve_region() == "eu-central-1"
    assert aws.resolve_region("ap-south-1") == "ap-south-1"
    assert IamAuthToken("db", 5432, "app").region == "eu-central-1"
    assert SecretsManagerSecret("db", "sa-east-1").region == "sa-east-1"


@pytest.mark.parametrize(
    "make",
    [
        lambda: IamAuthToken("db", 5432, "app"),
        lambda: SecretsManagerSecret("db"),
        lambda: resolve_proxy_endpoint("proxy"),
    ],
    ids=["iam", "secrets-manager", "proxy"],
)
def test_missing_region_names_the_settings_that_give_one(make, no_region: None) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    message = str(info.value)
    assert message.startswith("region:")
    assert "LAMBDAPOOL_REGION" in message and "AWS_REGION" in message and "region=" in message


@pytest.mark.parametrize(
    ("make", "setting"),
    [
        (lambda: IamAuthToken("db", 5432, "app", "eu-west-1", renew_before=900), "renew_before"),
        (lambda: IamAuthToken("db", 5432, "app", "eu-west-1", renew_before=-1), "renew_before"),
        (lambda: IamAuthToken("db", 0, "app", "eu-west-1"), "port"),
        (lambda: IamAuthToken("", 5432, "app", "eu-west-1"), "host"),
        (lambda: SecretsManagerSecret("db", "eu-west-1", ttl=-1), "ttl"),
        (lambda: SecretsManagerSecret("", "eu-west-1"), "secret_id"),
        (lambda: resolve_proxy_endpoint("", "eu-west-1"), "proxy_name"),
    ],
)
def test_bad_settings_name_the_setting(make, setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        make()


def _run(code: str) -> str:
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, env=env, check=True,
    )  # fmt: skip
    return done.stdout


def test_no_aws_sdk_is_imported_until_a_token_is_needed() -> None:
    out = _run(
        """
        import sys
        from lambdapool.credentials import IamAuthToken, SecretsManagerSecret
        sdks = lambda: sorted(m for m in ("boto3", "botocore", "aiobotocore") if m in sys.modules)
        token = IamAuthToken("db.example", 5432, "app", "eu-west-1")
        SecretsManagerSecret("db", "eu-west-1")
        print(sdks())
        token.get()
        print(sdks())
        """
    )
    # The keys are in the environment (as on Lambda): the token is signed without any SDK.
    assert out.splitlines() == ["[]", "[]"]


def test_missing_boto3_names_the_aws_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    aws.reset_clients()
    monkeypatch.setitem(sys.modules, "boto3", None)  # what `import boto3` meets when not installed
    with pytest.raises(ConfigError, match=r"pip install 'lambdapool\[aws\]'"):
        IamAuthToken("db", 5432, "app", "eu-west-1").get()


def test_missing_aiobotocore_names_the_aws_async_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    aws.reset_clients()
    monkeypatch.setitem(sys.modules, "aiobotocore", None)
    monkeypatch.setitem(sys.modules, "aiobotocore.session", None)
    with pytest.raises(ConfigError, match=r"pip install 'lambdapool\[aws-async\]'"):
        asyncio.run(IamAuthToken("db", 5432, "app", "eu-west-1").aget())


def test_concurrent_tasks_share_one_fetch() -> None:
    async def slow_password() -> str:
        await asyncio.sleep(0.05)
        return PASSWORD

    provider = PasswordCallable(slow_password)

    async def burst() -> list[Secret]:
        return await asyncio.gather(*(provider.aget() for _ in range(8)))

    assert [s.password for s in asyncio.run(burst())] == [PASSWORD] * 8
    assert provider.fetches == 1


def test_a_cancelled_caller_does_not_cancel_the_shared_fetch() -> None:
    async def slow_password() -> str:
        await asyncio.sleep(0.05)
        return PASSWORD

    provider = PasswordCallable(slow_password)

    async def scenario() -> str:
        impatient = asyncio.ensure_future(provider.aget())
        patient = asyncio.ensure_future(provider.aget())
        await asyncio.sleep(0.01)
        impatient.cancel()
        return (await patient).password

    assert asyncio.run(scenario()) == PASSWORD
    assert provider.fetches == 1
