"""Client auth (SCRAM, IAM tokens as boto3 makes them, trust) and TLS for clients."""

from __future__ import annotations

import datetime
import os

import pytest

from lambdapool.tools.proxy.auth import AuthFailed, verify_iam_token

AKID, SECRET = "AKIAPROXYTEST0000001", "proxy-test-secret-key"


def make_token(
    host: str, port: int, user: str, *, akid: str = AKID, secret: str = SECRET, region: str = "us-east-1"
) -> str:
    import boto3

    session = boto3.session.Session(aws_access_key_id=akid, aws_secret_access_key=secret, region_name=region)
    return session.client("rds").generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user, Region=region)


def test_scram_users(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=1, auth="scram", users={"app": "s3cret", "other": "pw2"})
    assert proxy.dsn.startswith("postgresql://app@") and "s3cret" not in proxy.dsn
    with psycopg.connect(proxy.dsn, password="s3cret") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(proxy.dsn, password="wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(proxy.dsn, user="nobody", password="s3cret")
    assert proxy.stats()["auth_failures"] == 2


def test_scram_with_asyncpg(make_proxy):
    import asyncio

    import asyncpg

    proxy = make_proxy(max_backends=1, auth="scram", users={"app": "s3cret"})

    async def main() -> int:
        conn = await asyncpg.connect(proxy.dsn, password="s3cret")
        try:
            return await conn.fetchval("SELECT 7")
        finally:
            await conn.close()

    assert asyncio.run(main()) == 7


def test_iam_token_from_boto3_is_accepted_and_forgeries_refused(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=1, auth="iam", iam_credentials={AKID: SECRET}, region="us-east-1", user="app")
    good = make_token(proxy.host, proxy.port, "app")
    with psycopg.connect(proxy.dsn, password=good) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    bad = {
        "signature does not match": make_token(proxy.host, proxy.port, "app", secret="not-the-secret"),
        "unknown access key": make_token(proxy.host, proxy.port, "app", akid="AKIAUNKNOWN000000000"),
        "made for user": make_token(proxy.host, proxy.port, "someone-else"),
        "not this proxy": make_token(proxy.host, proxy.port + 1, "app"),
        "region": make_token(proxy.host, proxy.port, "app", region="eu-west-1"),
        "not an IAM auth token": "plain-password",
        "signature does not match ": good.replace("DBUser=app", "DBUser=app") + "0",
    }
    for why, token in bad.items():
        with pytest.raises(psycopg.OperationalError, match=why.strip()):
            psycopg.connect(proxy.dsn, password=token)
    assert proxy.stats()["auth_failures"] == len(bad)


def test_iam_token_expiry_and_clock():
    token = make_token("127.0.0.1", 5555, "app")
    args = {"hosts": {"127.0.0.1"}, "port": 5555, "user": "app", "credentials": {AKID: SECRET}, "region": "us-east-1"}
    now = datetime.datetime.now(datetime.timezone.utc)
    verify_iam_token(token, now=now, **args)
    verify_iam_token(token, now=now + datetime.timedelta(minutes=14), **args)
    with pytest.raises(AuthFailed, match="expired"):
        verify_iam_token(token, now=now + datetime.timedelta(minutes=16), **args)
    with pytest.raises(AuthFailed, match="future"):
        verify_iam_token(token, now=now - datetime.timedelta(minutes=10), **args)


def test_tls_with_self_signed_certificate_and_require_tls(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=1, tls=True, require_tls=True)
    assert proxy.ca_file and os.path.exists(proxy.ca_file)
    with psycopg.connect(proxy.dsn, sslmode="verify-full", sslrootcert=proxy.ca_file) as conn:
        assert conn.info.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="TLS is required"):
        psycopg.connect(proxy.dsn, sslmode="disable")


def test_tls_optional_and_asyncpg_over_tls(make_proxy):
    import asyncio
    import ssl

    import asyncpg
    import psycopg

    proxy = make_proxy(max_backends=1, tls=True)
    with psycopg.connect(proxy.dsn, sslmode="disable") as conn:
        assert not conn.info.pgconn.ssl_in_use
    ctx = ssl.create_default_context(cafile=proxy.ca_file)

    async def main() -> int:
        conn = await asyncpg.connect(proxy.dsn, ssl=ctx)
        try:
            return await conn.fetchval("SELECT 5")
        finally:
            await conn.close()

    assert asyncio.run(main()) == 5


def test_backend_over_tls(pg_factory):
    import psycopg

    from lambdapool.testing import LocalProxy

    pg = pg_factory(tls=True, password="pw")
    with LocalProxy(pg.dsn, max_backends=1) as proxy:  # pg.dsn says sslmode=require
        with psycopg.connect(proxy.dsn) as conn:
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


def test_given_certificate_and_trust_to_the_server(pg_factory, tmp_path):
    import psycopg

    from lambdapool.testing import LocalProxy
    from lambdapool.tools.testing.tls import write_self_signed

    crt, key = tmp_path / "given.crt", tmp_path / "given.key"
    write_self_signed(crt, key, "127.0.0.1")
    pg = pg_factory()  # no password: the server trusts the proxy
    with LocalProxy(pg.dsn, max_backends=1, tls=True, cert_file=str(crt), key_file=str(key)) as proxy:
        assert proxy.ca_file == str(crt)
        with psycopg.connect(proxy.dsn, sslmode="verify-full", sslrootcert=str(crt)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_gssenc_request_is_refused_and_the_session_continues(make_proxy):
    import socket

    from lambdapool.tools.proto import Parser
    from lambdapool.tools.proto import messages as m

    proxy = make_proxy(max_backends=1)
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(m.gssenc_request())
        assert sock.recv(1) == b"N"
        sock.sendall(m.startup_message({"user": "postgres", "database": "postgres"}) + m.query("SELECT 6"))
        parser, seen = Parser(frontend=False), []
        while seen.count("Z") < 2:  # the startup's ReadyForQuery, then the query's
            parser.receive_data(sock.recv(65536))
            seen += [e.type for e in parser.events()]
        assert seen[0] == "R" and seen[-4:] == ["T", "D", "C", "Z"]
