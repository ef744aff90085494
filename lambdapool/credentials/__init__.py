"""Credentials for a database login: static, a callable, an IAM token, a Secrets Manager secret.

Every provider has the same small interface (:class:`CredentialProvider`): ``get()`` for sync
code, ``aget()`` for async code, both served from one cache; ``invalidate()`` after the server
rejected what was served; ``can_refresh`` (is a retry after invalidate() worth it?) and
``fetches`` (how many real fetches were made). Importing this package imports no AWS SDK.
"""

from __future__ import annotations

from lambdapool.credentials.base import CredentialProvider, Secret
from lambdapool.credentials.iam import IamAuthToken
from lambdapool.credentials.proxy_endpoint import aresolve_proxy_endpoint, resolve_proxy_endpoint
from lambdapool.credentials.secrets_manager import SecretsManagerSecret
from lambdapool.credentials.static import PasswordCallable, StaticPassword

__all__ = [
    "CredentialProvider",
    "IamAuthToken",
    "PasswordCallable",
    "Secret",
    "SecretsManagerSecret",
    "StaticPassword",
    "aresolve_proxy_endpoint",
    "resolve_proxy_endpoint",
]
