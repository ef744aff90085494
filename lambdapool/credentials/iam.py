"""IAM database authentication: a token signed locally, cached, renewed before it expires.

A token is a URL (``host:port/?Action=connect&DBUser=...&X-Amz-Expires=900&...``) presigned with
the caller's AWS keys: no network call. It is signed here with the stdlib
(:mod:`lambdapool.credentials.sigv4`, byte for byte what boto3's ``generate_db_auth_token``
makes), with keys from :mod:`lambdapool.credentials.aws_keys`: on Lambda, from the environment,
so an IAM cold start imports no AWS SDK at all. A token lets a client *begin* a login for 15
minutes; an established connection outlives it. So a token is reused until fewer than
``renew_before`` seconds of its life remain (or of the keys' life, for keys that expire), and
renewed then; whether the login is allowed is decided by the server (RDS / RDS Proxy), which
checks ``rds-db:connect`` at connect time.
"""

from __future__ import annotations

import time

from lambdapool import _aws as aws
from lambdapool.credentials import sigv4
from lambdapool.credentials.aws_keys import AwsKeys, AwsKeySource, default_keys
from lambdapool.credentials.base import CachedProvider, Clock, Secret
from lambdapool.errors import ConfigError

TOKEN_LIFETIME = float(sigv4.EXPIRES)  # seconds; fixed by AWS (X-Amz-Expires=900)
KEYS_MARGIN = 60.0  # a token is not used within this many seconds of its keys' expiry


class IamAuthToken(CachedProvider):
    """An RDS / RDS Proxy IAM auth token for ``user`` at ``host:port``.

    Keys come from ``keys`` (default: the process's :data:`~lambdapool.credentials.aws_keys.default_keys`:
    environment, container endpoint, then botocore's chain). ``renew_before`` (default 300 s) is
    how much of the token's 900 s life must remain for it to be reused: the margin covers clock
    skew and a connect that retries.
    """

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        region: str | None = None,
        *,
        renew_before: float = 300.0,
        clock: Clock = time.time,
        keys: AwsKeySource | None = None,
    ) -> None:
        if not host or not user:
            raise ConfigError(
                f"IAM auth needs host and user (got host={host!r}, user={user!r}): "
                "the token is signed for exactly that endpoint and database user"
            )
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"port: IAM auth needs the endpoint's port, 1-65535; got {port!r}")
        if not 0 <= renew_before < TOKEN_LIFETIME:
            raise ConfigError(
                f"renew_before: must be at least 0 and under the token's {TOKEN_LIFETIME:.0f} s "
                f"life; got {renew_before!r} (default 300)"
            )
        super().__init__(clock)  # wall clock by default: the token's expiry is wall time
        self.host, self.port, self.user = host, port, user
        self.region = aws.resolve_region(region)
        self._lifetime = TOKEN_LIFETIME - renew_before
        self._keys = keys if keys is not None else default_keys

    def _fetch(self) -> tuple[Secret, float]:
        return self._signed(self._keys.get())

    async def _afetch(self) -> tuple[Secret, float]:
        return self._signed(await self._keys.aget())

    def invalidate(self) -> None:
        """Drop the token, and cached container keys with it: the server refused what they signed."""
        super().invalidate()
        self._keys.invalidate()

    def _signed(self, keys: AwsKeys) -> tuple[Secret, float]:
        token = sigv4.db_auth_token(self.host, self.port, self.user, self.region, keys)
        lifetime = self._lifetime
        if keys.expires is not None:  # a token is worth nothing once its keys have expired
            lifetime = max(0.0, min(lifetime, keys.expires - time.time() - KEYS_MARGIN))
        return self._secret_of(token), lifetime

    def _secret_of(self, token: str) -> Secret:
        return Secret(password=token, username=self.user, host=self.host, port=self.port)

    def __repr__(self) -> str:
        return f"IamAuthToken(host={self.host!r}, port={self.port}, user={self.user!r}, region={self.region!r})"
