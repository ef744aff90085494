"""Cloud SQL IAM database login: an OAuth2 access token as the password, cached, renewed early.

Manual IAM database authentication (Cloud SQL for PostgreSQL): the password is an OAuth2 access
token of the function's service account, the user its email without ``.gserviceaccount.com``
(a user account's full email), unless the DSN or the ``user`` setting names one.

Where the token comes from is decided from the environment, with no probe at a cold start:

1. The metadata server, when ``GCE_METADATA_HOST`` is set (google-auth's variable; also its older
   name ``GCE_METADATA_ROOT``) or the process runs on Google Cloud: ``K_SERVICE`` (Cloud Run
   services and functions) or ``CLOUD_RUN_JOB`` (Cloud Run jobs). Not ``FUNCTION_TARGET``:
   functions-framework sets it on a laptop too. ``GET http://HOST/computeMetadata/v1/instance/service-accounts/default/token``
   (``Metadata-Flavor: Google``) answers ``{"access_token", "expires_in", "token_type"}``, and
   ``.../default/email`` the account's email, over plain HTTP with the standard library: no
   google library is imported. Async code runs the fetch in a thread.
2. Anywhere else (a laptop), google-auth's application default credentials, imported only then
   (``pip install 'lambdapool[gcp]'``), refreshed with its urllib3 transport.

The token is asked for with the ``sqlservice.login`` scope, as Google's Cloud SQL connectors
and Auth Proxy ask for theirs. It is reused until fewer than ``renew_before`` (300 s) of its
life remain, counted from before the fetch, as RDS IAM tokens are (credentials.iam); a login
the server rejects drops it and the core fetches once more. No token or response body is ever
put in a message or a repr.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from lambdapool.credentials import _http
from lambdapool.credentials.base import CachedProvider, Clock, Secret
from lambdapool.errors import AuthError, ConfigError

METADATA_HOST = "metadata.google.internal"
ACCOUNT_PATH = "/computeMetadata/v1/instance/service-accounts/default"
LOGIN_SCOPE = "https://www.googleapis.com/auth/sqlservice.login"
# Set by the platform only (Cloud Run's container contract: services and functions, jobs)
GOOGLE_MARKERS = ("K_SERVICE", "CLOUD_RUN_JOB")
SERVICE_ACCOUNT_SUFFIX = ".gserviceaccount.com"
TOKENINFO_URL = "https://oauth2.googleapis.com/tokeninfo"  # a user account's email (ADC only)
ADC_HINT = "pip install 'lambdapool[gcp]' for application default credentials (gcloud auth application-default login)"


def metadata_host(environ: Mapping[str, str] | None = None) -> str | None:
    """The metadata server's ``host[:port]`` if this process should ask it, else None (use ADC)."""
    env = os.environ if environ is None else environ
    host = env.get("GCE_METADATA_HOST") or env.get("GCE_METADATA_ROOT")
    if host:
        return host
    return METADATA_HOST if any(env.get(name) for name in GOOGLE_MARKERS) else None


def database_user(email: str) -> str:
    """The Cloud SQL for PostgreSQL user of an IAM principal: a service account's email less
    ``.gserviceaccount.com``, a user account's email as it is."""
    return email[: -len(SERVICE_ACCOUNT_SUFFIX)] if email.endswith(SERVICE_ACCOUNT_SUFFIX) else email


class CloudSqlIamToken(CachedProvider):
    """Cloud SQL IAM login credentials: an access token, and the user unless ``user`` is given.

    ``renew_before`` (default 300 s): how much of a token's life must remain for it to be
    reused. ``environ`` (default ``os.environ``, read at each fetch) decides between the
    metadata server and application default credentials (the module docstring).
    """

    def __init__(
        self,
        user: str | None = None,
        *,
        renew_before: float = 300.0,
        clock: Clock = time.time,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if renew_before < 0:
            raise ConfigError(f"renew_before: must be at least 0 seconds; got {renew_before!r} (default 300)")
        super().__init__(clock)  # wall clock by default: expires_in counts wall time
        self.user = user
        self.renew_before = renew_before
        self._environ = environ
        self._email: str | None = None  # the account's, fetched once: it does not change
        self._adc: Any = None  # google-auth credentials, on the ADC path only

    @property
    def source(self) -> str:
        host = metadata_host(self._environ)
        return f"metadata server {host}" if host else "application default credentials"

    def _fetch(self) -> tuple[Secret, float]:
        host = metadata_host(self._environ)
        token, expires_in = self._metadata_token(host) if host else self._adc_token()
        if self.user:
            user = self.user
        else:
            if self._email is None:
                self._email = self._metadata_email(host) if host else self._adc_email(token)
            user = database_user(self._email)
        return Secret(password=token, username=user), max(0.0, expires_in - self.renew_before)

    async def _afetch(self) -> tuple[Secret, float]:
        import asyncio

        # A local HTTP GET or google-auth's refresh: both block, so off the event loop.
        return await asyncio.get_running_loop().run_in_executor(None, self._fetch)

    # -- the metadata server -------------------------------------------------------------------
    def _metadata_get(self, host: str, what: str, query: str = "") -> bytes:
        url = f"http://{host}{ACCOUNT_PATH}/{what}{query}"
        where = f"the metadata server ({host}, {_host_source(self._environ)})"
        try:
            status, body = _http.get_retried(url, {"Metadata-Flavor": "Google"}, final=frozenset({403, 404}))
        except (OSError, ValueError) as exc:
            raise AuthError(
                f"Cloud SQL IAM login: could not reach {where}: {type(exc).__name__}. Not on Google Cloud? "
                "Point GCE_METADATA_HOST at a metadata server (lambdapool.testing.MetadataServer in tests), "
                f"or unset {', '.join(GOOGLE_MARKERS)} and {ADC_HINT}"
            ) from None
        if status != 200:
            hint = (
                "the instance has no service account, or the server is not a Google metadata server"
                if status in (403, 404)
                else "try again; if it persists, check the service account"
            )
            raise AuthError(f"Cloud SQL IAM login: {where} answered HTTP {status} for the {what}: {hint}")
        return body

    def _metadata_token(self, host: str) -> tuple[str, float]:
        body = self._metadata_get(host, "token", "?" + urlencode({"scopes": LOGIN_SCOPE}))
        try:
            data: Any = json.loads(body)
            token, expires_in = str(data["access_token"]), float(data["expires_in"])
        except (ValueError, KeyError, TypeError):
            # Never quote the body: it holds the token when only one field is malformed.
            raise AuthError(
                f"Cloud SQL IAM login: the metadata server ({host}) answered with no access_token/expires_in "
                "in the expected JSON shape"
            ) from None
        if not token:
            raise AuthError(f"Cloud SQL IAM login: the metadata server ({host}) answered with an empty access_token")
        return token, expires_in

    def _metadata_email(self, host: str) -> str:
        email = self._metadata_get(host, "email").decode("utf-8", "replace").strip()
        if "@" not in email:
            raise AuthError(
                f"Cloud SQL IAM login: the metadata server ({host}) answered with no service account email; "
                "set user (LAMBDAPOOL_USER) to the IAM database user"
            )
        return email

    # -- application default credentials ---------------------------------------------------
    def _adc_token(self) -> tuple[str, float]:
        try:
            import google.auth
            import google.auth.exceptions
            import google.auth.transport.urllib3
            import urllib3
        except ImportError:
            raise ConfigError(
                "iam_auth with Cloud SQL off Google Cloud (no GCE_METADATA_HOST, K_SERVICE or CLOUD_RUN_JOB) "
                f"needs google-auth: {ADC_HINT}"
            ) from None
        failure: Exception | None = None  # raised after the except blocks: google-auth's must not stay reachable
        try:
            if self._adc is None:
                self._adc, _ = google.auth.default(scopes=[LOGIN_SCOPE])
            started = time.time()
            transport: Any = google.auth.transport.urllib3  # (untyped)
            self._adc.refresh(transport.Request(urllib3.PoolManager()))
        except google.auth.exceptions.DefaultCredentialsError:
            failure = ConfigError(
                "Cloud SQL IAM login: no application default credentials: run "
                "'gcloud auth application-default login' or set GOOGLE_APPLICATION_CREDENTIALS"
            )
        except google.auth.exceptions.GoogleAuthError as exc:
            # (its text may quote a token endpoint's answer: only the kind is kept, not even as __context__)
            failure = AuthError(
                f"Cloud SQL IAM login: refreshing application default credentials failed ({type(exc).__name__}); "
                "run 'gcloud auth application-default login' again or check GOOGLE_APPLICATION_CREDENTIALS"
            )
        if failure is not None:
            raise failure
        expiry = getattr(self._adc, "expiry", None)  # naive UTC datetime, or None
        if expiry is None:
            return self._adc.token, 3600.0
        import calendar

        return self._adc.token, calendar.timegm(expiry.timetuple()) - started

    def _adc_email(self, token: str) -> str:
        email = getattr(self._adc, "service_account_email", None)
        if isinstance(email, str) and "@" in email:
            return email
        # A user account (gcloud auth application-default login): the token's own email.
        try:
            url = f"{TOKENINFO_URL}?{urlencode({'access_token': token})}"  # (never in a message)
            status, body = _http.get_retried(url, {}, final=frozenset({400, 401, 403}))
            data: Any = json.loads(body) if status == 200 else {}
            email = data.get("email") if isinstance(data, dict) else None
        except (OSError, ValueError):
            email = None
        if not isinstance(email, str) or "@" not in email:
            raise ConfigError(
                "Cloud SQL IAM login: could not tell which user the application default credentials are "
                "(no service account email, and tokeninfo named none): set user (LAMBDAPOOL_USER) to your "
                "IAM database user (your email)"
            )
        return email

    def __repr__(self) -> str:
        return f"CloudSqlIamToken(user={self.user!r}, source={self.source!r})"


def _host_source(environ: Mapping[str, str] | None) -> str:
    env = os.environ if environ is None else environ
    if env.get("GCE_METADATA_HOST"):
        return "from GCE_METADATA_HOST"
    if env.get("GCE_METADATA_ROOT"):
        return "from GCE_METADATA_ROOT"
    return f"the default, as {next(n for n in GOOGLE_MARKERS if env.get(n))} is set"
