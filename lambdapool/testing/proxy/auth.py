"""Authentication for the local proxy: clients (SCRAM, IAM-style tokens, trust) and the server.

Client side, the proxy behaves like RDS Proxy: SCRAM-SHA-256 against a user list (``scramp``
does the cryptography), or the password is an IAM auth token as
``boto3.client("rds").generate_db_auth_token(host, port, user, region)`` makes it. A token is a
SigV4-presigned URL ``host:port/?Action=connect&DBUser=...&X-Amz-...``; we check the host and
port it was made for, the user, its expiry (``X-Amz-Date`` + ``X-Amz-Expires``) and recompute
the signature with the secret key of the access key it names, from the configured test
credentials. Nothing is sent to AWS.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from urllib.parse import parse_qsl, quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
CLOCK_SKEW = datetime.timedelta(minutes=5)


class AuthFailed(Exception):
    """The client's credentials were refused; the message is safe to log (no secrets)."""


class ScramVerifier:
    """Server side of SCRAM-SHA-256 for a fixed user list (salted once, at start)."""

    MECHANISM = "SCRAM-SHA-256"

    def __init__(self, users: dict[str, str]) -> None:
        from scramp import ScramMechanism

        self._mechanism = ScramMechanism(self.MECHANISM)
        self._info = {user: self._mechanism.make_auth_info(pw, iteration_count=4096) for user, pw in users.items()}
        # Unknown users run the same exchange against a random secret, so they fail the same way.
        self._decoy = self._mechanism.make_auth_info(hashlib.sha256(str(id(self)).encode()).hexdigest(), iteration_count=4096)

    def start(self, user: str, client_first: bytes) -> tuple[object, bytes]:
        """Begin an exchange; returns (state for :meth:`finish`, server-first message)."""
        from scramp import ScramException

        info = self._info.get(user, self._decoy)
        server = self._mechanism.make_server(lambda _name: info)
        try:
            server.set_client_first(client_first.decode())
        except (ScramException, UnicodeDecodeError, ValueError) as exc:
            raise AuthFailed(f"malformed SCRAM client-first message: {exc}") from None
        return server, server.get_server_first().encode()

    def finish(self, user: str, state: object, client_final: bytes) -> bytes:
        """Check the client's proof; returns the server-final message or raises AuthFailed."""
        from scramp import ScramException

        try:
            state.set_client_final(client_final.decode())  # type: ignore[attr-defined]
        except (ScramException, UnicodeDecodeError, ValueError):
            raise AuthFailed(f'password authentication failed for user "{user}"') from None
        if user not in self._info:
            raise AuthFailed(f'password authentication failed for user "{user}"')
        return state.get_server_final().encode()  # type: ignore[attr-defined]


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _encode(text: str) -> str:
    return quote(text, safe="-_.~")


def verify_iam_token(token: str, *, hosts: set[str], port: int, user: str, credentials: dict[str, str],
                     region: str | None, now: datetime.datetime | None = None) -> None:  # fmt: skip
    """Raise :class:`AuthFailed` unless ``token`` is a valid RDS IAM auth token for ``user``.

    ``hosts``: the names the token may be made for (the proxy's host, e.g. 127.0.0.1 and
    localhost); ``credentials``: ``{access_key_id: secret_access_key}``; ``region``: required
    region, or None for any.
    """
    bad = f'PAM authentication failed for user "{user}"'  # what RDS says for a bad token
    netloc, sep, query = token.partition("/?")
    if not sep:
        raise AuthFailed(f"{bad}: the password is not an IAM auth token")
    try:
        params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
    except ValueError:
        raise AuthFailed(f"{bad}: the token's query string is malformed") from None
    needed = ("Action", "DBUser", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
              "X-Amz-SignedHeaders", "X-Amz-Signature")  # fmt: skip
    missing = [k for k in needed if k not in params]
    if missing:
        raise AuthFailed(f"{bad}: the token lacks {', '.join(missing)}")
    host, _, token_port = netloc.rpartition(":")
    if host not in hosts or token_port != str(port):
        raise AuthFailed(f"{bad}: the token was made for {netloc}, not this proxy ({sorted(hosts)[0]}:{port})")
    if params["Action"] != "connect" or params["DBUser"] != user:
        raise AuthFailed(f"{bad}: the token was made for user {params['DBUser']!r}")
    if params["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256" or params["X-Amz-SignedHeaders"] != "host":
        raise AuthFailed(f"{bad}: unsupported signing algorithm or signed headers")
    try:
        access_key, date8, token_region, service, terminator = params["X-Amz-Credential"].split("/")
        signed_at = datetime.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
        expires = int(params["X-Amz-Expires"])
    except ValueError:
        raise AuthFailed(f"{bad}: malformed X-Amz-Credential, X-Amz-Date or X-Amz-Expires") from None
    if service != "rds-db" or terminator != "aws4_request" or date8 != params["X-Amz-Date"][:8]:
        raise AuthFailed(f"{bad}: the credential scope is not rds-db")
    if region is not None and token_region != region:
        raise AuthFailed(f"{bad}: the token was signed for region {token_region!r}, not {region!r}")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not 0 < expires <= 900:
        raise AuthFailed(f"{bad}: X-Amz-Expires must be 1..900 seconds, got {expires}")
    if now > signed_at + datetime.timedelta(seconds=expires):
        raise AuthFailed(f"{bad}: the token expired at {signed_at + datetime.timedelta(seconds=expires):%Y-%m-%dT%H:%M:%SZ}")
    if signed_at > now + CLOCK_SKEW:
        raise AuthFailed(f"{bad}: the token is dated in the future ({params['X-Amz-Date']})")
    secret = credentials.get(access_key)
    if secret is None:
        raise AuthFailed(f"{bad}: unknown access key id {access_key[:4]}...")
    canonical_query = "&".join(
        f"{_encode(k)}={_encode(v)}" for k, v in sorted(params.items()) if k != "X-Amz-Signature"
    )
    canonical_request = "\n".join(["GET", "/", canonical_query, f"host:{netloc}\n", "host", EMPTY_SHA256])
    scope = f"{date8}/{token_region}/rds-db/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = _hmac(("AWS4" + secret).encode(), date8)
    for part in (token_region, "rds-db", "aws4_request"):
        key = _hmac(key, part)
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
        raise AuthFailed(f"{bad}: the token's signature does not match (forged or signed with another key)")


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The answer to a server's AuthenticationMD5Password request."""
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()
