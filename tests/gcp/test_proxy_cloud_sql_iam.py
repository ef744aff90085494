"""The local proxy in Cloud SQL IAM mode: ``LocalProxy(backend, auth="cloud-sql-iam", metadata=server)``.

First the login alone (``ClientHandshake``, a scripted client, byte by byte, tokens from a real
:class:`~lambdapool.testing.MetadataServer`), then the real proxy in front of a real Postgres,
with psycopg and asyncpg logging in with the tokens that server hands out over HTTP.
"""

from __future__ import annotations

import asyncio

import pytest

from lambdapool._drivers.base import classify_connect_error
from lambdapool.errors import ConfigError
from lambdapool.testing import LocalProxy, MetadataServer
from lambdapool.tools.proto import messages as m
from lambdapool.tools.proxy.config import BackendTarget, ProxySettings
from lambdapool.tools.proxy.handshake import LoggedIn, Phase, Send, StartTls
from tests.gcp.test_metadata_server import EMAIL, token
from tests.proxy.test_handshake import BASELINE, fatal_code, feed, handshake, proxy, startup, welcome

DB_USER = "orders-fn@shop-prod.iam"
REFUSAL = f'Cloud SQL IAM service account authentication failed for user "{DB_USER}"'


@pytest.fixture
def metadata():
    with MetadataServer(email=EMAIL) as server:
        yield server


def error_text(close) -> str:  # type: ignore[no-untyped-def]
    return m.read_error(close.last_words[5:])["M"]


# -- the login, sans I/O -------------------------------------------------------------------------
def test_a_token_the_metadata_server_issued_logs_in(metadata):
    ctx = proxy(auth="cloud-sql-iam", metadata=metadata)
    login = handshake(ctx)
    # THEN the proxy asks for a cleartext password, as Cloud SQL does for an IAM user
    assert feed(login, startup(user=DB_USER)) == [Send(m.auth_request(m.AUTH_CLEARTEXT))]
    assert login.phase is Phase.PASSWORD
    access_token = token(metadata)["access_token"]
    assert feed(login, m.password(access_token.encode())) == [Send(welcome()), LoggedIn({}, dict(BASELINE))]
    assert ctx.counters["auth_failures"] == 0


@pytest.mark.parametrize("spoil", ["revoke", "expire", "never-issued", "other-user"])
def test_a_bad_token_is_refused_as_cloud_sql_refuses_it(metadata, spoil):
    ctx = proxy(auth="cloud-sql-iam", metadata=metadata)
    login = handshake(ctx)
    access_token = token(metadata)["access_token"]
    user = DB_USER
    if spoil == "revoke":
        metadata.revoke(access_token)
    elif spoil == "expire":
        metadata.expire_all()
    elif spoil == "never-issued":
        access_token = "ya29.c." + "A" * 100
    else:
        user = "app"
    feed(login, startup(user=user))
    (close,) = feed(login, m.password(access_token.encode()))
    text = error_text(close)
    # THEN Cloud SQL's words and SQLSTATE, the reason after them, and never the token
    assert fatal_code(close) == "28000"
    assert text.startswith(f'Cloud SQL IAM service account authentication failed for user "{user}" (')
    reason = {
        "revoke": "was revoked",
        "expire": "has expired",
        "never-issued": "not an access token the metadata server issued",
        "other-user": f"logs in as {DB_USER!r}",
    }[spoil]
    assert reason in text and access_token not in text
    assert login.phase is Phase.CLOSED and ctx.counters["auth_failures"] == 1


def test_a_token_in_plaintext_is_refused_when_tls_is_offered(metadata):
    ctx = proxy(auth="cloud-sql-iam", metadata=metadata)
    ctx.tls_offered = True
    (close,) = feed(handshake(ctx), startup(user=DB_USER))
    assert fatal_code(close) == "28000" and "no encryption" in error_text(close)
    # the same login over TLS is asked for its token
    login = handshake(ctx)
    assert feed(login, m.ssl_request()) == [Send(b"S"), StartTls()]
    assert login.tls_started() == []
    assert feed(login, startup(user=DB_USER)) == [Send(m.auth_request(m.AUTH_CLEARTEXT))]


def test_the_mode_needs_a_metadata_server_and_the_server_needs_the_mode(metadata):
    target = BackendTarget.from_dsn("postgresql://app@127.0.0.1:5432/app")
    with pytest.raises(ConfigError, match=r"needs metadata=MetadataServer"):
        ProxySettings(backend=target, host="127.0.0.1", port=0, auth="cloud-sql-iam").validate()
    with pytest.raises(ConfigError, match='only used with auth="cloud-sql-iam"'):
        ProxySettings(backend=target, host="127.0.0.1", port=0, auth="trust", metadata=metadata).validate()
    with pytest.raises(ConfigError, match="needs metadata"):
        LocalProxy("postgresql://app@127.0.0.1:5432/app", auth="cloud-sql-iam")


# -- the real proxy ------------------------------------------------------------------------------
@pytest.fixture
def iam_proxy(pg_server, local_proxy, metadata) -> LocalProxy:
    return local_proxy(pg_server, auth="cloud-sql-iam", metadata=metadata, tls=True)


def test_psycopg_logs_in_with_a_token_and_not_with_a_revoked_one(iam_proxy, metadata):
    import psycopg

    # the proxy's DSN names the service account's database user
    assert iam_proxy.user == DB_USER and f"{DB_USER.replace('@', '%40')}@" in iam_proxy.dsn
    access_token = token(metadata)["access_token"]
    with psycopg.connect(iam_proxy.dsn, password=access_token, sslmode="require") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    metadata.revoke(access_token)
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(iam_proxy.dsn, password=access_token, sslmode="require")
    assert REFUSAL in str(info.value) and access_token not in str(info.value)
    assert classify_connect_error(info.value) == "auth"  # the SDK refreshes once, then AuthError
    # a fresh token from the metadata server logs in again
    with psycopg.connect(iam_proxy.dsn, password=token(metadata)["access_token"], sslmode="require") as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)
    assert iam_proxy.stats()["auth_failures"] == 1


def test_psycopg_without_tls_is_refused_when_the_proxy_offers_it(iam_proxy, metadata):
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(iam_proxy.dsn, password=token(metadata)["access_token"], sslmode="disable")


def test_asyncpg_logs_in_and_a_refusal_carries_sqlstate_28000(iam_proxy, metadata):
    import asyncpg

    async def login(password: str) -> int:
        conn = await asyncpg.connect(iam_proxy.dsn, password=password, ssl="require")
        try:
            return await conn.fetchval("SELECT 7")
        finally:
            await conn.close()

    access_token = token(metadata)["access_token"]
    assert asyncio.run(login(access_token)) == 7
    metadata.expire_all()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError) as info:  # SQLSTATE 28000
        asyncio.run(login(access_token))
    assert info.value.sqlstate == "28000" and REFUSAL in str(info.value)
    assert classify_connect_error(info.value) == "auth"


# -- `lambdapool proxy --auth cloud-sql-iam --gce-metadata EMAIL` --------------------------------
def test_the_cli_runs_a_metadata_server_beside_the_proxy_and_takes_its_tokens(pg_server):
    import http.client
    import json
    import signal
    from urllib.parse import quote

    import psycopg

    from lambdapool.testing import free_port
    from tests.proxy.test_cli import read_banner, start_cli

    port = free_port()
    proc = start_cli("--backend", pg_server.dsn, "--listen", f"127.0.0.1:{port}", "--tls", "--status-interval", "0",
                     "--auth", "cloud-sql-iam", "--gce-metadata", EMAIL)  # fmt: skip
    try:
        assert "auth=cloud-sql-iam" in read_banner(proc)
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert f"user {DB_USER}" in line, line
        host, metadata_port = line.rsplit("GCE_METADATA_HOST=", 1)[1].strip().rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(metadata_port), timeout=10)
        conn.request("GET", "/computeMetadata/v1/instance/service-accounts/default/token",
                     headers={"Metadata-Flavor": "Google"})  # fmt: skip
        access_token = json.loads(conn.getresponse().read())["access_token"]
        conn.close()
        database = BackendTarget.from_dsn(pg_server.dsn).database
        dsn = f"postgresql://{quote(DB_USER, safe='')}@127.0.0.1:{port}/{database}?sslmode=require"
        with psycopg.connect(dsn, password=access_token) as db:
            assert db.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="Cloud SQL IAM service account authentication failed"):
            psycopg.connect(dsn, password="ya29.c.not-issued-here")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert access_token not in out + err


def test_the_cli_mode_and_its_metadata_flag_go_together(pg_server, capsys):
    from lambdapool.tools.cli import main

    assert main(["proxy", "--backend", pg_server.dsn, "--auth", "cloud-sql-iam"]) == 2
    assert "--gce-metadata" in capsys.readouterr().err
    assert main(["proxy", "--backend", pg_server.dsn, "--gce-metadata", EMAIL]) == 2
    assert "only with --auth cloud-sql-iam" in capsys.readouterr().err
