"""Authentication for the local proxy: clients (SCRAM, IAM-style tokens, trust) and the server.

Cloud SQL IAM (``auth="cloud-sql-iam"``): the password is an OAuth2 access token that a
:class:`TokenIssuer` (``lambdapool.testing.MetadataServer``) handed out; it is good while that
issuer says it is valid (issued there, not expired, not revoked), for its service account's
database user only (:func:`verify_cloud_sql_token`).

Client side, the proxy behaves like RDS Proxy: SCRAM-SHA-256 against a user list (``scramp``
does the cryptography), or the password is an IAM auth token as
``boto3.client("rds").generate_db_auth_token(host, port, user, region)`` makes it. A token is a
SigV4-presigned URL ``host:port/?Action=connect&DBUser=...&X-Amz-...``; we check the host and
port it was made for, the user, its expiry (``X-Amz-Date`` + ``X-Amz-Expires``) and recompute
the signature with the secret key of the access key it names, from the configured test
credentials. Nothing is sent to AWS.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import secrets
from typing import Protocol
from urllib.parse import parse_qsl, quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
CLOCK_SKEW = datetime.timedelta(minutes=5)


class AuthFailed(Exception):
    """The client's credentials were refused; the message is safe to log (no secrets)."""


# An exchange between start() and finish(): client-first-bare, server-first, nonce, GS2 header,
# StoredKey, ServerKey (secrets: never logged; the tuple's repr is never shown)
ScramExchange = tuple[str, str, str, str, bytes, bytes]


class ScramVerifier:
    """Server side of SCRAM-SHA-256 (RFC 5802/7677) for a fixed user list, salted once at start.

    ``scramp`` derives the keys (with SASLprep); the three messages are handled here because
    Postgres clients send an empty user name (``n=,``: the user is in the startup packet),
    which scramp's message parser rejects.
    """

    MECHANISM = "SCRAM-SHA-256"

    def __init__(self, users: dict[str, str]) -> None:
        from scramp import ScramMechanism

        mechanism = ScramMechanism(self.MECHANISM)
        self._info = {user: mechanism.make_auth_info(pw, iteration_count=4096) for user, pw in users.items()}
        # Unknown users run the same exchange against a random secret, so they fail the same way.
        self._decoy = mechanism.make_auth_info(secrets.token_hex(16), iteration_count=4096)

    def start(self, user: str, client_first: bytes) -> tuple[ScramExchange, bytes]:
        """Begin an exchange; returns (state for :meth:`finish`, server-first message)."""
        try:
            text = client_first.decode()
            gs2_flag, _authzid, bare = text.split(",", 2)
            attrs = dict(item.split("=", 1) for item in bare.split(","))
            client_nonce = attrs["r"]
        except (UnicodeDecodeError, ValueError, KeyError):
            raise AuthFailed("malformed SCRAM client-first message") from None
        if gs2_flag not in ("n", "y") or not client_nonce:
            raise AuthFailed("SCRAM channel binding is not offered by this proxy; use SCRAM-SHA-256")
        salt, stored_key, server_key, iterations = self._info.get(user, self._decoy)
        nonce = client_nonce + base64.b64encode(secrets.token_bytes(18)).decode()
        server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={iterations}"
        state = (bare, server_first, nonce, text[: len(text) - len(bare)], stored_key, server_key)
        return state, server_first.encode()

    def finish(self, user: str, state: ScramExchange, client_final: bytes) -> bytes:
        """Check the client's proof; returns the server-final message or raises AuthFailed."""
        bare, server_first, nonce, gs2_header, stored_key, server_key = state
        failed = AuthFailed(f'password authentication failed for user "{user}"')
        try:
            text = client_final.decode()
            without_proof, _, proof_attr = text.rpartition(",p=")
            attrs = dict(item.split("=", 1) for item in without_proof.split(","))
            proof = base64.b64decode(proof_attr, validate=True)
        except (UnicodeDecodeError, ValueError):
            raise failed from None
        if attrs.get("r") != nonce or attrs.get("c") != base64.b64encode(gs2_header.encode()).decode():
            raise failed
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        if len(proof) != len(signature):
            raise failed
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if user not in self._info or not hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key):
            raise failed
        verifier = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        return b"v=" + base64.b64encode(verifier)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _encode(text: str) -> str:
    return quote(text, safe="-_.~")


def verify_iam_token(
    token: str,
    *,
    hosts: set[str],
    port: int,
    user: str,
    credentials: dict[str, str],
    region: str | None,
    now: datetime.datetime | None = None,
) -> None:
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
    needed = (
        "Action",
        "DBUser",
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    )
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
        signed_at = datetime.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc
        )
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
        raise AuthFailed(
            f"{bad}: the token expired at {signed_at + datetime.timedelta(seconds=expires):%Y-%m-%dT%H:%M:%SZ}"
        )
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


class TokenIssuer(Protocol):
    """What the proxy needs of a metadata server (``lambdapool.testing.MetadataServer`` is one)."""

    @property
    def db_user(self) -> str: ...

    def token_status(self, token: str) -> str:
        """``"valid"``, ``"expired"``, ``"revoked"`` or ``"unknown"``."""
        ...


_TOKEN_REASONS = {
    "expired": "the access token has expired; fetch a new one from the metadata server",
    "revoked": "the access token was revoked; fetch a new one from the metadata server",
    "unknown": "the password is not an access token the metadata server issued",
}


def verify_cloud_sql_token(token: str, *, user: str, issuer: TokenIssuer) -> None:
    """Raise :class:`AuthFailed` (with the reason, never the token) unless ``token`` is a valid
    access token of ``issuer`` and ``user`` is its service account's database user."""
    if user != issuer.db_user:
        raise AuthFailed(f"the token's service account logs in as {issuer.db_user!r}, not {user!r}")
    status = issuer.token_status(token)
    if status != "valid":
        raise AuthFailed(_TOKEN_REASONS.get(status, f"the metadata server says the token is {status!r}"))


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The answer to a server's AuthenticationMD5Password request."""
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()
