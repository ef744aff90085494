"""Where the AWS keys that sign an IAM auth token come from, in the order Lambda hands them out.

1. The environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN``
   (``AWS_SECURITY_TOKEN`` too, as botocore reads it). This is an ordinary Lambda function: its
   execution role's keys are in the environment, so a token costs no import and no I/O.
2. The container credentials endpoint: ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`` (on
   169.254.170.2) or ``AWS_CONTAINER_CREDENTIALS_FULL_URI``, with the header from
   ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`` or ``AWS_CONTAINER_AUTHORIZATION_TOKEN``. SnapStart,
   Lambda Managed Instances, ECS and EKS Pod Identity hand keys out this way. Fetched with the
   stdlib (a local HTTP GET), kept until 15 minutes before their ``Expiration`` (botocore's
   advisory refresh; a token signed with them must stay good for its 15 minutes), then fetched
   again. Async code runs the fetch in a thread, so the event loop is never blocked by it.
3. Anything else (profiles, SSO, assume-role, instance metadata): botocore's full credential
   chain, through boto3 (sync) or aiobotocore (async), imported only when 1 and 2 give nothing.

Keys are read when a token is made, not at import: they are not cached from the environment
(Lambda's do not change within an instance; a test's may). No key, token or response body is
ever put in a message or a repr.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from lambdapool.credentials import _http
from lambdapool.errors import AuthError, ConfigError

CONTAINER_HOST = "169.254.170.2"  # where AWS_CONTAINER_CREDENTIALS_RELATIVE_URI points
# botocore's list: a FULL_URI over plain http must be one of these (or a loopback address),
# so that a stray variable cannot send the authorization token anywhere else.
CONTAINER_HOSTS = {CONTAINER_HOST, "169.254.170.23", "fd00:ec2::23", "localhost"}
REFRESH_BEFORE = 15 * 60.0  # seconds of life left at which container keys are fetched anew


@dataclass(frozen=True)
class AwsKeys:
    """One set of AWS credentials; ``repr()`` shows where they came from, never a secret."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
    expires: float | None = None  # wall-clock seconds (time.time()); None: does not expire
    source: str = "environment"


def _from_environment(environ: Mapping[str, str]) -> AwsKeys | None:
    access_key = environ.get("AWS_ACCESS_KEY_ID")
    secret_key = environ.get("AWS_SECRET_ACCESS_KEY")
    if not access_key and not secret_key:
        return None
    if not access_key or not secret_key:
        missing = "AWS_SECRET_ACCESS_KEY" if access_key else "AWS_ACCESS_KEY_ID"
        raise AuthError(
            f"AWS credentials: {missing} is not set but its partner is; set both (plus "
            "AWS_SESSION_TOKEN for temporary credentials), or neither to use another source"
        )
    token = environ.get("AWS_SECURITY_TOKEN") or environ.get("AWS_SESSION_TOKEN") or None
    return AwsKeys(access_key, secret_key, token, source="environment")


def _container_request(environ: Mapping[str, str]) -> tuple[str, dict[str, str]] | None:
    """The container endpoint's URL and headers, or None when the environment names none."""
    relative = environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    full = environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    if relative:  # botocore's precedence
        url = f"http://{CONTAINER_HOST}{relative}"
    elif full:
        url = full
        _check_container_url(url)
    else:
        return None
    headers = {"Accept": "application/json"}
    token_file = environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as handle:
                auth = handle.read().strip()
        except OSError as exc:
            raise ConfigError(
                f"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: cannot read {token_file!r} "
                f"({exc.strerror or type(exc).__name__}); point it at the token file the platform wrote"
            ) from None
    else:
        auth = environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN", "")
    if auth:
        if "\r" in auth or "\n" in auth:
            raise ConfigError(
                "AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE): the token contains a line break; "
                "it must be a single header value"
            )
        headers["Authorization"] = auth
    return url, headers


def _check_container_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    host = parts.hostname or ""
    import ipaddress  # only for a FULL_URI over http

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "http" or not (loopback or host in CONTAINER_HOSTS):
        raise ConfigError(
            f"AWS_CONTAINER_CREDENTIALS_FULL_URI: host {host!r} over {parts.scheme or 'no scheme'} is "
            "refused; use https, a loopback address, or one of " + ", ".join(sorted(CONTAINER_HOSTS))
        )


def _parse_expiration(text: str) -> float:
    # "2026-12-02T12:00:00Z" (ECS, Lambda); fromisoformat takes "Z" from Python 3.11 on.
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def fetch_container_keys(url: str, headers: dict[str, str]) -> AwsKeys:
    """GET the container endpoint (retried like botocore: 3 attempts) and parse its answer."""
    what = "the container credentials endpoint (AWS_CONTAINER_CREDENTIALS_*_URI)"
    try:
        status, body = _http.get_retried(url, headers, final=frozenset({401, 403}))
    except (OSError, ValueError) as exc:  # refused, timed out, unresolvable, bad URL
        raise AuthError(
            f"AWS credentials: could not reach {what}: {type(exc).__name__}; is the variable right for this platform?"
        ) from None
    if status in (401, 403):  # a wrong token does not get better by retrying
        raise AuthError(
            f"AWS credentials: {what} refused the request (HTTP {status}); check "
            "AWS_CONTAINER_AUTHORIZATION_TOKEN / AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
        )
    if status != 200:
        raise AuthError(f"AWS credentials: {what} answered HTTP {status}")
    return _parse_container_keys(body, what)


def _parse_container_keys(body: bytes, what: str) -> AwsKeys:
    try:
        data: Any = json.loads(body)
        keys = AwsKeys(
            access_key=str(data["AccessKeyId"]),
            secret_key=str(data["SecretAccessKey"]),
            token=str(data["Token"]) if data.get("Token") else None,
            expires=_parse_expiration(data["Expiration"]) if data.get("Expiration") else None,
            source="container endpoint",
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        # Never quote the body: it holds the keys when only one field is malformed.
        raise AuthError(
            f"AWS credentials: {what} answered with no AccessKeyId/SecretAccessKey/Expiration "
            "in the expected JSON shape"
        ) from None
    if not keys.access_key or not keys.secret_key:
        raise AuthError(f"AWS credentials: {what} answered with empty keys")
    return keys


class AwsKeySource:
    """The keys to sign with, from the first source that has them (the module docstring's order).

    One per process is enough (:data:`default_keys`); container keys are cached here, shared by
    every token. ``clock`` is wall time: ``Expiration`` is.
    """

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: AwsKeys | None = None
        self._cached_for: tuple[str, dict[str, str]] | None = None
        self._sdk_credentials: Any = None  # botocore's credentials object, refreshing itself
        self._aio_credentials: Any = None
        self.fetches = 0  # container endpoint fetches made

    def get(self) -> AwsKeys:
        """Keys for sync code; the container endpoint is fetched in this thread."""
        keys = _from_environment(os.environ)
        if keys is not None:
            return keys
        request = _container_request(os.environ)
        if request is not None:
            return self._container(request)
        return self._from_sdk()

    async def aget(self) -> AwsKeys:
        """Keys for async code; the container fetch runs in a thread, off the event loop."""
        keys = _from_environment(os.environ)
        if keys is not None:
            return keys
        request = _container_request(os.environ)
        if request is not None:
            fresh = self._fresh(request)
            if fresh is not None:
                return fresh
            import asyncio

            return await asyncio.get_running_loop().run_in_executor(None, self._container, request)
        return await self._afrom_sdk()

    def invalidate(self) -> None:
        """Forget cached container keys (after the server rejected what they signed)."""
        self._cached = None

    def _fresh(self, request: tuple[str, dict[str, str]]) -> AwsKeys | None:
        keys = self._cached
        if keys is None or self._cached_for != request:
            return None
        if keys.expires is not None and self._clock() >= keys.expires - REFRESH_BEFORE:
            return None
        return keys

    def _container(self, request: tuple[str, dict[str, str]]) -> AwsKeys:
        fresh = self._fresh(request)
        if fresh is not None:
            return fresh
        with self._lock:  # threads at a cold start fetch once between them
            fresh = self._fresh(request)
            if fresh is None:
                fresh = fetch_container_keys(*request)
                self._cached, self._cached_for = fresh, request
                self.fetches += 1
            return fresh

    def _from_sdk(self) -> AwsKeys:
        from lambdapool import _aws as aws

        with self._lock, _translated_chain():
            if self._sdk_credentials is None:
                boto3 = aws.import_sdk("boto3", "aws")
                self._sdk_credentials = _found(boto3.session.Session().get_credentials())
            return _keys_of(self._sdk_credentials.get_frozen_credentials())

    async def _afrom_sdk(self) -> AwsKeys:
        from lambdapool import _aws as aws

        with _translated_chain():
            if self._aio_credentials is None:
                session = aws.import_sdk("aiobotocore.session", "aws-async").get_session()
                self._aio_credentials = _found(await session.get_credentials())
            return _keys_of(await self._aio_credentials.get_frozen_credentials())

    def reset(self) -> None:
        """Forget everything cached, SDK credential objects included (tests; changed profiles)."""
        with self._lock:
            self._cached = self._cached_for = None
            self._sdk_credentials = self._aio_credentials = None


default_keys = AwsKeySource()

_CHAIN = "find AWS credentials to sign an IAM auth token"


def _found(credentials: Any) -> Any:
    if credentials is None:
        from lambdapool import _aws as aws

        raise AuthError(f"could not {_CHAIN}: {aws.CREDENTIALS_HINT}")
    return credentials


def _keys_of(frozen: Any) -> AwsKeys:
    return AwsKeys(frozen.access_key, frozen.secret_key, frozen.token or None, source="botocore chain")


@contextmanager
def _translated_chain() -> Iterator[None]:
    """botocore's credential-chain errors as lambdapool's; their texts are not quoted (secrets)."""
    from lambdapool import _aws as aws

    try:
        yield
    except Exception as exc:
        bx = sys.modules.get("botocore.exceptions")
        if bx is None or not isinstance(exc, bx.BotoCoreError):
            raise
        if isinstance(exc, bx.ProfileNotFound):
            raise ConfigError(
                f"AWS_PROFILE: could not {_CHAIN}: the profile is not in AWS_CONFIG_FILE / "
                "AWS_SHARED_CREDENTIALS_FILE (~/.aws/config, ~/.aws/credentials); fix the name or unset it"
            ) from exc
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            raise AuthError(f"could not {_CHAIN}: {aws.CREDENTIALS_HINT}") from exc
        raise AuthError(
            f"could not {_CHAIN}: botocore's credential chain failed ({type(exc).__name__}); "
            "check the profile's settings (SSO login, role_arn, credential_process) or give keys "
            "in the environment"
        ) from exc
