"""An RDS IAM auth token: the ``rds-db:connect`` URL presigned with AWS Signature Version 4.

Why not an SDK: ``boto3.client("rds").generate_db_auth_token`` costs boto3's import and the
``rds`` service model (~200-300 ms of CPU and ~30 MiB on a cold start) to compute a few
HMAC-SHA256s; even botocore's ``SigV4QueryAuth`` alone costs ~85 ms and ~11 MiB to import next
to psycopg (awscrt ~35 ms and ~5 MiB). This module is the stdlib (~0 ms). It reproduces what
botocore does for that one URL (``botocore/signers.py: generate_db_auth_token`` with
``SigV4QueryAuth``) step for step, and tests compare its output with boto3's byte for byte.

The URL, as botocore builds it: ``https://HOST:PORT/`` with the body ``Action=connect&DBUser=USER``
moved into the query, then the auth parameters in botocore's order; signed headers: ``host``
only (lower-cased, the port dropped when it is 443, the https default); payload: the SHA-256 of
an empty body; the token is the URL without its ``https://``.
"""

from __future__ import annotations

import datetime
from urllib.parse import quote, urlsplit

from lambdapool.credentials.aws_keys import AwsKeys

EXPIRES = 900  # seconds; what generate_db_auth_token signs, and the most RDS accepts
SERVICE = "rds-db"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # of b""


def _encode(value: str) -> str:
    return quote(value.encode("utf-8"), safe="-_.~")  # botocore.utils.percent_encode


def _hmac(key: bytes, text: str) -> bytes:
    import hashlib  # here, not at import: the password path loads this module too (~8 ms)
    import hmac

    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def _host_header(url: str) -> str:
    """The ``host`` header botocore signs (``botocore.auth._host_from_url``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""  # lower-cased by urlsplit
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    if parts.port is not None and parts.port != 443:
        host = f"{host}:{parts.port}"
    return host


def db_auth_token(
    host: str, port: int, user: str, region: str, keys: AwsKeys, now: datetime.datetime | None = None
) -> str:
    """The token ``generate_db_auth_token(host, port, user, region)`` makes with ``keys`` at ``now``.

    ``now`` (UTC; default: the current time) exists so that tests can compare with boto3 at
    one frozen instant.
    """
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.timezone.utc)
    timestamp = moment.strftime("%Y%m%dT%H%M%SZ")
    day = timestamp[:8]
    scope = f"{day}/{region}/{SERVICE}/aws4_request"
    url = f"https://{host}:{port}/"
    params = [
        ("Action", "connect"),
        ("DBUser", user),
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", f"{keys.access_key}/{scope}"),
        ("X-Amz-Date", timestamp),
        ("X-Amz-Expires", str(EXPIRES)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    if keys.token is not None:
        params.append(("X-Amz-Security-Token", keys.token))
    encoded = [(_encode(name), _encode(value)) for name, value in params]
    query = "&".join(f"{name}={value}" for name, value in encoded)
    canonical_query = "&".join(f"{name}={value}" for name, value in sorted(encoded))
    canonical_request = "\n".join(["GET", "/", canonical_query, f"host:{_host_header(url)}\n", "host", EMPTY_SHA256])
    import hashlib

    digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", timestamp, scope, digest])
    key = _hmac(f"AWS4{keys.secret_key}".encode(), day)
    for part in (region, SERVICE, "aws4_request", string_to_sign):
        key = _hmac(key, part)
    signature = key.hex()
    return f"{host}:{port}/?{query}&X-Amz-Signature={signature}"
