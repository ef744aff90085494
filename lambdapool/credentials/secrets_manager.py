"""A database secret in AWS Secrets Manager, in the JSON shape RDS and its rotation Lambdas use.

The shape: ``{"username", "password", "host", "port", "dbname", "engine"}``; only ``password``
is required. The secret is cached for ``ttl`` seconds, so a warm instance reads it once per TTL
rather than once per invocation (each read is a billed API call and a round trip). A rotation
shows itself as a rejected login: the caller then calls ``invalidate()`` and connects once more
with the value fetched anew.
"""

from __future__ import annotations

import json
import time
from typing import Any

from lambdapool import _aws as aws
from lambdapool.credentials.base import CachedProvider, Clock, Secret
from lambdapool.errors import ConfigError


class SecretsManagerSecret(CachedProvider):
    """The ``AWSCURRENT`` version of secret ``secret_id`` (name or ARN), cached for ``ttl`` s.

    ``endpoint_url`` points the client elsewhere (a VPC endpoint, moto in tests); botocore also
    honours ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_SECRETS_MANAGER``.
    """

    def __init__(
        self,
        secret_id: str,
        region: str | None = None,
        *,
        ttl: float = 300.0,
        clock: Clock = time.monotonic,
        endpoint_url: str | None = None,
    ) -> None:
        if not secret_id:
            raise ConfigError("secret_id: empty; give the secret's name or ARN")
        if not ttl >= 0:
            raise ConfigError(f"ttl: seconds to cache the secret, 0 or more; got {ttl!r} (default 300)")
        super().__init__(clock)
        self.secret_id = secret_id
        self.region = aws.resolve_region(region)
        self._ttl = ttl
        self._endpoint_url = endpoint_url

    def _request(self) -> aws.AwsCall:
        return aws.AwsCall(
            service="secretsmanager",
            method="get_secret_value",
            region=self.region,
            endpoint_url=self._endpoint_url,
            action=f"read Secrets Manager secret {self.secret_id!r}",
            permission="secretsmanager:GetSecretValue",
            # Name the stage: after a stage move, moto (and a lagging replica) may serve the old one.
            params={"SecretId": self.secret_id, "VersionStage": "AWSCURRENT"},
            not_found=(
                f"secret_id: Secrets Manager has no secret {self.secret_id!r} in {self.region}; "
                "check the name or ARN and the region"
            ),
        )

    def _fetch(self) -> tuple[Secret, float]:
        return self._parse(aws.call(self._request())), self._ttl

    async def _afetch(self) -> tuple[Secret, float]:
        return self._parse(await aws.acall(self._request())), self._ttl

    def _parse(self, response: dict[str, Any]) -> Secret:
        """The RDS secret JSON as a :class:`Secret`; errors name fields, never their values."""
        where = f"Secrets Manager secret {self.secret_id!r}"
        text = response.get("SecretString")
        if text is None:
            raise ConfigError(f"{where} is binary (SecretBinary); store the RDS JSON as a string")
        try:
            fields = json.loads(text)
        except ValueError:
            fields = None  # the decoder's exception carries the whole text: never chain it
        if not isinstance(fields, dict):
            raise ConfigError(
                f"{where} is not a JSON object; store it in the RDS shape "
                '{"username", "password", "host", "port", "dbname"}'
            )
        password = fields.get("password")
        if not isinstance(password, str) or not password:
            raise ConfigError(f'{where} has no "password" field (a non-empty string); add it')
        return Secret(
            password=password,
            username=_text(fields, "username", where),
            host=_text(fields, "host", where),
            port=_port(fields.get("port"), where),
            dbname=_text(fields, "dbname", where),
        )

    def __repr__(self) -> str:
        return f"SecretsManagerSecret({self.secret_id!r}, region={self.region!r}, ttl={self._ttl})"


def _text(fields: dict[str, Any], name: str, where: str) -> str | None:
    value = fields.get(name)
    if value is None or isinstance(value, str):
        return value or None
    raise ConfigError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")


def _port(value: Any, where: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        port = int(value)  # rotation Lambdas write it as a number, consoles often as a string
    except (TypeError, ValueError):
        port = 0
    if not 0 < port < 65536:
        raise ConfigError(f"{where}: field 'port' must be a port number 1-65535, got {value!r}")
    return port
