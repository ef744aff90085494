"""Credentials for a database login: static, a callable, an IAM token (RDS's or Cloud SQL's), a
Secrets Manager secret.

Every provider has the same small interface (:class:`CredentialProvider`): ``get()`` for sync
code, ``aget()`` for async code, both served from one cache; ``invalidate()`` after the server
rejected what was served; ``can_refresh`` (is a retry after invalidate() worth it?) and
``fetches`` (how many real fetches were made). Importing this package imports no AWS SDK, and
an IAM token signed with keys from the environment or a container endpoint never imports one;
nor does a Cloud SQL IAM token from the metadata server import a google library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lambdapool.credentials.aws_keys import AwsKeys, AwsKeySource
    from lambdapool.credentials.base import CredentialProvider, Secret
    from lambdapool.credentials.gcp_metadata import CloudSqlIamToken
    from lambdapool.credentials.iam import IamAuthToken
    from lambdapool.credentials.proxy_endpoint import aresolve_proxy_endpoint, resolve_proxy_endpoint
    from lambdapool.credentials.secrets_manager import SecretsManagerSecret
    from lambdapool.credentials.sigv4 import db_auth_token
    from lambdapool.credentials.static import PasswordCallable, StaticPassword

# Each name loads its module on first use (PEP 562): a password cold start imports static.py
# and base.py, not the IAM, Secrets Manager and AWS modules (~4 ms of a ~190 ms cold start).
_HOMES = {
    "AwsKeys": "aws_keys",
    "AwsKeySource": "aws_keys",
    "CredentialProvider": "base",
    "Secret": "base",
    "CloudSqlIamToken": "gcp_metadata",
    "IamAuthToken": "iam",
    "aresolve_proxy_endpoint": "proxy_endpoint",
    "resolve_proxy_endpoint": "proxy_endpoint",
    "SecretsManagerSecret": "secrets_manager",
    "db_auth_token": "sigv4",
    "PasswordCallable": "static",
    "StaticPassword": "static",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # found directly next time
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


__all__ = [
    "AwsKeySource",
    "AwsKeys",
    "CloudSqlIamToken",
    "CredentialProvider",
    "IamAuthToken",
    "PasswordCallable",
    "Secret",
    "SecretsManagerSecret",
    "StaticPassword",
    "aresolve_proxy_endpoint",
    "db_auth_token",
    "resolve_proxy_endpoint",
]
