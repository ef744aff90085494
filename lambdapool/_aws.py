"""AWS SDK access for lambdapool: lazy clients, the region rule, botocore errors translated.

Theory of operation
-------------------
* Nothing here imports boto3, botocore or aiobotocore at module level: ``import lambdapool``
  is on every cold start, and boto3 alone costs ~180 ms to import. The SDKs load on the first
  call that needs them; a missing SDK is a :class:`ConfigError` naming the extra to install.
* Sync code uses boto3 clients, built once per (service, region, endpoint) and kept for the
  life of the process: building one costs ~200 ms, and boto3 clients are thread-safe.
* Async code uses aiobotocore. Its clients hold an aiohttp session bound to the event loop
  that opened it, so a client is opened and closed around each call; the aiobotocore session
  (service models, credential chain) is kept. Calls are rare (a token every ~10 minutes, a
  secret every TTL), so the per-call client is cheap next to the round trip it wraps.
* :func:`call` and :func:`acall` are the one boundary where botocore exceptions become
  lambdapool's (STYLE.md §6): every message says what was attempted, on which resource, and
  the fix (the IAM permission, the missing credentials, the extra to install). No request
  parameter or response value is ever put in a message: some of them are secrets.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from lambdapool.errors import AuthError, ConfigError, ConnectionUnavailable

REGION_HINT = (
    "pass region=..., or set LAMBDAPOOL_REGION, AWS_REGION or AWS_DEFAULT_REGION (Lambda sets AWS_REGION itself)"
)
CREDENTIALS_HINT = (
    "no AWS credentials were found: on Lambda the function's execution role provides them; "
    "elsewhere set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for "
    "temporary credentials), or AWS_PROFILE, or run with an instance/task role"
)

# botocore waits 60 s to connect and 60 s to read, longer than most functions' deadlines: an
# endpoint that cannot be reached (a VPC without a NAT gateway or VPC endpoint) must fail with
# a message while the invocation is still alive. Retries stay botocore's (AWS_MAX_ATTEMPTS).
TIMEOUTS = {"connect_timeout": 3, "read_timeout": 10}
NO_RETRIES = {"total_max_attempts": 1}  # for callers whose own retries know their deadline

# Error codes, grouped by what the user has to do about them.
_NOT_FOUND = {"ResourceNotFoundException", "DBProxyNotFoundFault", "DBProxyNotFound"}
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}
_BAD_CREDENTIALS = {
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
}
_KMS = {"DecryptionFailure", "KMSAccessDeniedException", "KMSDisabledException"}


class AwsNotFound(ConfigError):
    """The named AWS resource (secret, proxy) does not exist in the region asked."""


def resolve_region(region: str | None = None) -> str:
    """The region to use: the argument, else ``AWS_REGION``, else ``AWS_DEFAULT_REGION``.

    ``LAMBDAPOOL_REGION`` is read by lambdapool's settings and arrives here as the argument.
    """
    found = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not found:
        raise ConfigError(f"region: no AWS region given and none in the environment; {REGION_HINT}")
    return found


@dataclass(frozen=True)
class AwsCall:
    """One AWS API call, with what a user needs to hear when it fails.

    ``action`` reads after "could not" ("read Secrets Manager secret 'db'"); ``permission`` is the
    IAM action the caller needs; ``not_found`` is the message when the resource does not exist.
    """

    service: str
    method: str
    region: str
    action: str
    permission: str
    params: dict[str, Any] = field(default_factory=dict, repr=False)
    endpoint_url: str | None = None
    not_found: str | None = None


_clients: dict[tuple[str, str, str | None, bool], Any] = {}
_clients_lock = threading.Lock()
_aio_session: Any = None


def client(service: str, region: str, endpoint_url: str | None = None, *, retries: bool = True) -> Any:
    """A boto3 client, built on first use and kept: building one costs ~200 ms. ``retries``
    False turns botocore's own retries off (the caller retries within its deadline)."""
    key = (service, region, endpoint_url, retries)
    found = _clients.get(key)
    if found is not None:
        return found
    with _clients_lock:  # threads racing at a cold start build one client, not one each
        if key not in _clients:
            boto3 = import_sdk("boto3", "aws")
            from botocore.config import Config

            with translated_errors(f"create a boto3 {service} client", region=region):
                config = Config(**TIMEOUTS) if retries else Config(retries=NO_RETRIES, **TIMEOUTS)
                _clients[key] = boto3.session.Session().client(
                    service, region_name=region, endpoint_url=endpoint_url, config=config
                )
        return _clients[key]


def reset_clients() -> None:
    """Forget the kept clients (tests; or after changing credentials in the environment)."""
    global _aio_session
    with _clients_lock:
        _clients.clear()
        _aio_session = None
    from lambdapool.credentials.aws_keys import default_keys  # the IAM signer's cached keys too

    default_keys.reset()


def call(request: AwsCall) -> Any:
    """Make ``request`` with boto3; botocore errors come out as lambdapool errors."""
    api = client(request.service, request.region, request.endpoint_url)
    with translated_errors(request.action, request.region, request.permission, request.not_found):
        return getattr(api, request.method)(**request.params)


async def acall(request: AwsCall) -> Any:
    """Make ``request`` with aiobotocore; botocore errors come out as lambdapool errors."""
    global _aio_session
    if _aio_session is None:
        session = import_sdk("aiobotocore.session", "aws-async")
        _aio_session = session.get_session()
    with translated_errors(request.action, request.region, request.permission, request.not_found):
        from aiobotocore.config import AioConfig

        async with _aio_session.create_client(
            request.service,
            region_name=request.region,
            endpoint_url=request.endpoint_url,
            config=AioConfig(**TIMEOUTS),
        ) as api:
            return await getattr(api, request.method)(**request.params)


def import_sdk(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"{module.split('.')[0]} is not installed and lambdapool needs it to talk to AWS: "
            f"pip install 'lambdapool[{extra}]'"
        ) from exc


@contextmanager
def translated_errors(
    action: str, region: str, permission: str | None = None, not_found: str | None = None
) -> Iterator[None]:
    """Turn botocore's exceptions into ConfigError / AuthError / ConnectionUnavailable."""
    import botocore.exceptions as bx  # present whenever a client exists

    try:
        yield
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
        raise AuthError(f"could not {action}: {CREDENTIALS_HINT}") from exc
    except bx.NoRegionError as exc:
        raise ConfigError(f"region: could not {action}: {REGION_HINT}") from exc
    except bx.ClientError as exc:
        raise _client_error(exc, action, region, permission, not_found) from exc
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as exc:
        raise ConnectionUnavailable(
            f"could not {action}: the AWS endpoint in {region} did not answer ({type(exc).__name__}); "
            "in a VPC without internet access the function needs a VPC endpoint or a NAT gateway"
        ) from exc


def _client_error(exc: Any, action: str, region: str, permission: str | None, not_found: str | None) -> Exception:
    error = exc.response.get("Error", {})
    code = error.get("Code", "Unknown")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    message = " ".join(str(error.get("Message", "")).split())[:300]
    said = f"AWS said {code}: {message}".rstrip(": ")
    if code in _NOT_FOUND:
        return AwsNotFound(f"{not_found or f'could not {action}: not found in {region}'} ({said})")
    if code in _BAD_CREDENTIALS:
        return AuthError(
            f"could not {action}: AWS rejected the credentials; check AWS_ACCESS_KEY_ID/"
            f"AWS_PROFILE and that temporary credentials have not expired ({said})"
        )
    if code in _KMS:
        return AuthError(
            f"could not {action}: the secret's KMS key cannot be used; the caller needs "
            f"kms:Decrypt on that key ({said})"
        )
    if code in _DENIED or status == 403:
        need = f" the caller needs IAM permission {permission} on it" if permission else ""
        return AuthError(f"could not {action}:{need} ({said})")
    return ConfigError(f"could not {action} in {region} ({said})")
