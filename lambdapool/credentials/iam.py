"""IAM database authentication: a token signed locally, cached, renewed before it expires.

``generate_db_auth_token`` makes no network call: it signs a URL
(``host:port/?Action=connect&DBUser=...&X-Amz-Expires=900&...``) with the caller's AWS
credentials, in ~0.2 ms. What costs is the SDK around it (boto3's import and client, ~300 ms on
a cold start), so the SDK loads on the first token, not before. A token lets a client *begin* a
login for 15 minutes; an established connection outlives it. So a token is reused until fewer
than ``renew_before`` seconds of its life remain, and renewed then; whether the login is allowed
is decided by the server (RDS / RDS Proxy), which checks ``rds-db:connect`` at connect time.
"""

from __future__ import annotations

import time

from lambdapool import aws
from lambdapool.credentials.base import CachedProvider, Clock, Secret
from lambdapool.errors import ConfigError

TOKEN_LIFETIME = 900.0  # seconds; fixed by AWS (X-Amz-Expires=900)


class IamAuthToken(CachedProvider):
    """An RDS / RDS Proxy IAM auth token for ``user`` at ``host:port``.

    boto3 makes the token in sync code, aiobotocore in async code; neither is imported before
    the first token. ``renew_before`` (default 300 s) is how much of the token's 900 s life must
    remain for it to be reused: the margin covers clock skew and a connect that retries.
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

    def _request(self) -> aws.AwsCall:
        return aws.AwsCall(
            service="rds",
            method="generate_db_auth_token",
            region=self.region,
            action=f"generate an IAM auth token for {self.user}@{self.host}:{self.port}",
            permission="rds-db:connect",
            params={
                "DBHostname": self.host, "Port": self.port,
                "DBUsername": self.user, "Region": self.region,
            },  # fmt: skip
        )

    def _fetch(self) -> tuple[Secret, float]:
        return self._secret_of(aws.call(self._request())), self._lifetime

    async def _afetch(self) -> tuple[Secret, float]:
        return self._secret_of(await aws.acall(self._request())), self._lifetime

    def _secret_of(self, token: str) -> Secret:
        return Secret(password=token, username=self.user, host=self.host, port=self.port)

    def __repr__(self) -> str:
        return f"IamAuthToken(host={self.host!r}, port={self.port}, user={self.user!r}, region={self.region!r})"
