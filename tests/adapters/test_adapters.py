"""The adapters end to end: rds-proxy (moto for the control plane, the local proxy for the data
plane), Secrets Manager rotation, pinning, PgBouncer transaction mode, the registry."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from moto import mock_aws

import lambdapool
from lambdapool.testing import LocalProxy
from lambdapool.tools.testing.moto import create_db_proxy, create_secret, rotate_secret, signing_keys
from tests.support import DRIVERS, LambdaContext, query_handler, terminate

PROXY_NAME = "orders-proxy"


@pytest.fixture
def pg(pg_factory):
    return pg_factory(max_connections=60)


def iam_proxy(pg, **kwargs) -> LocalProxy:
    """The local proxy checking IAM tokens signed with moto's fake keys, TLS required."""
    return LocalProxy(backend=pg.dsn, auth="iam", iam_credentials=signing_keys(),
                      region="us-east-1", tls=True, require_tls=True, **kwargs)  # fmt: skip


def test_rds_proxy_found_by_name_with_iam_tokens_through_the_local_proxy(pg, aws_env, make_db):
    with mock_aws(), iam_proxy(pg, max_backends=3) as proxy:
        create_db_proxy(PROXY_NAME, proxy.host)
        db = make_db(f"postgresql://postgres@:{proxy.port}/postgres", pooler="rds-proxy",
                     proxy_name=PROXY_NAME, iam_auth=True, ssl_ca_file=proxy.ca_file)  # fmt: skip
        handler = query_handler(db)
        pids = {handler({}, LambdaContext()) for _ in range(50)}
        proxy.kill_backends()  # the proxy's backends die; the client session survives
        pids |= {handler({}, LambdaContext()) for _ in range(10)}
        stats = proxy.stats()
        address = f"{proxy.host}:{proxy.port}"
    assert db.adapter.describe()["endpoint"] == address
    assert db.adapter.credentials.fetches == 1, "the IAM token is made once and reused"
    assert db.stats()["connects"] == 1 and db.stats()["invocations"] == 60
    assert stats["pinned_sessions"] == 0 and stats["auth_failures"] == 0
    assert len(pids) >= 1


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg-async"])
def test_rds_proxy_async_path_uses_aiobotocore_against_moto_server(pg, moto_url, make_db, driver):
    with iam_proxy(pg, max_backends=3) as proxy:
        create_db_proxy(PROXY_NAME, proxy.host, endpoint_url=moto_url)
        db = make_db(f"postgresql://postgres@:{proxy.port}/postgres", driver=driver, pooler="rds-proxy",
                     proxy_name=PROXY_NAME, iam_auth=True, ssl_ca_file=proxy.ca_file,
                     aws_endpoint_url=moto_url)  # fmt: skip
        handler = query_handler(db)
        for _ in range(30):
            handler({}, LambdaContext())
        stats = proxy.stats()
    assert db.adapter.credentials.fetches == 1
    assert stats["pinned_sessions"] == 0 and db.stats()["invocations"] == 30


def test_unknown_proxy_name_is_a_config_error_naming_it(aws_env, make_db):
    with mock_aws():
        db = make_db("postgresql://postgres@/postgres", pooler="rds-proxy", proxy_name="nope", iam_auth=True)
        with pytest.raises(lambdapool.ConfigError, match="nope"):
            query_handler(db)({}, LambdaContext())


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_secret_rotation_costs_no_failed_invocation(pg_factory, aws_env, moto_url, make_db, driver):
    pg = pg_factory(password="old-Pw-1")
    arn = create_secret("db/app", {"username": "postgres", "password": "old-Pw-1"}, endpoint_url=moto_url)
    dsn = f"postgresql://127.0.0.1:{pg.port}/postgres"
    os.environ["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = moto_url  # boto3 and aiobotocore alike
    try:
        db = make_db(dsn, driver=driver, secret_arn=arn, aws_endpoint_url=moto_url)
        handler = query_handler(db)
        first = handler({}, LambdaContext())
        # Rotation: the new value becomes AWSCURRENT, the role's password changes...
        rotate_secret(arn, {"username": "postgres", "password": "new-Pw-2"}, endpoint_url=moto_url)
        pg.psql("ALTER ROLE postgres PASSWORD 'new-Pw-2'")
        # ...and the warm session ends (as after an idle timeout), so the next connect logs in anew.
        terminate(pg, first)  # the instance is frozen a while; the FATAL reaches its socket
        second = handler({}, LambdaContext())
    finally:
        del os.environ["AWS_ENDPOINT_URL_SECRETS_MANAGER"]
    assert second != first
    assert db.adapter.credentials.fetches == 2, "read once, fetched once more after the rejection"
    assert db.stats()["auth_refreshes"] == 1 and db.stats()["invocations"] == 2


def test_secret_without_a_password_field_is_a_config_error(aws_env, make_db):
    with mock_aws():
        arn = create_secret("db/broken", {"username": "app"})
        db = make_db("postgresql://127.0.0.1:1/postgres", secret_arn=arn)
        with pytest.raises(lambdapool.ConfigError, match="password"):
            query_handler(db)({}, LambdaContext())


def test_missing_region_is_a_config_error_at_init(monkeypatch):
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(lambdapool.ConfigError, match="region"):
        lambdapool.Database("postgresql://u@h/db", pooler="rds-proxy", iam_auth=True)


# -- pinning -------------------------------------------------------------------------------------


def workload(db: lambdapool.Database):
    """A realistic handler: parameterised queries (which drivers prepare) and a transaction."""
    if db.settings.driver == "psycopg":

        @db.lambda_handler
        def handler(event, context):
            with db.connection() as conn:
                for i in range(8):  # past psycopg's prepare_threshold of 5
                    conn.execute("SELECT %s::int + 1", (i,)).fetchone()
            try:
                with db.connection() as conn:
                    conn.execute("SELECT %s::int", (1,))
                    raise ValueError("roll back")
            except ValueError:
                pass

    elif db.settings.driver == "psycopg-async":

        @db.lambda_handler
        async def handler(event, context):
            async with db.connection() as conn:
                for i in range(8):
                    await (await conn.execute("SELECT %s::int + 1", (i,))).fetchone()

    else:

        @db.lambda_handler
        async def handler(event, context):
            async with db.connection() as conn, conn.transaction():
                for i in range(8):
                    await conn.fetchval("SELECT $1::int + 1", i)

    return handler


@pytest.mark.parametrize("driver", DRIVERS)
def test_many_instances_through_the_local_adapter_pin_nothing(pg, make_db, driver):
    with LocalProxy(backend=pg.dsn, max_backends=4) as proxy:
        handlers = [workload(make_db(proxy.dsn, driver=driver, pooler="local")) for _ in range(8)]
        for _ in range(30):  # 8 instances x 30 invocations
            for handler in handlers:
                handler({}, LambdaContext())
        stats = proxy.stats()
    assert stats["pinned_sessions"] == 0, stats["pin_reasons"]
    assert stats["peak_backends"] <= 4 and stats["transactions"] >= 240


def test_control_stock_pools_pin_sessions_behind_the_same_proxy(pg):
    # asyncpg.Pool's release sends its reset query (RESET ALL, UNLISTEN *...): MagicStack/asyncpg#1153.
    import asyncpg

    with LocalProxy(backend=pg.dsn, max_backends=4) as proxy:

        async def asyncpg_pool() -> None:
            pool = await asyncpg.create_pool(proxy.dsn, min_size=1, max_size=1)
            for i in range(3):
                async with pool.acquire() as conn:
                    await conn.fetchval("SELECT $1::int", i)
            await pool.close()

        asyncio.run(asyncpg_pool())
        # psycopg_pool: a rolled-back transaction that prepared statements makes psycopg send
        # DEALLOCATE ALL (psycopg/psycopg#1105).
        from psycopg_pool import ConnectionPool

        with ConnectionPool(proxy.dsn, min_size=1, max_size=1) as pool:
            try:
                with pool.connection() as conn:
                    for i in range(8):
                        conn.execute("SELECT %s::int + 1", (i,)).fetchone()
                    raise ValueError("roll back")
            except ValueError:
                pass
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        stats = proxy.stats()
    assert stats["pinned_sessions"] >= 2, stats["pin_reasons"]


def test_reset_session_behind_rds_proxy_warns_once(caplog):
    import lambdapool.adapters.rds_proxy as rds

    rds._warned_reset = False
    lambdapool.Database("postgresql://u@h/db", pooler="rds-proxy", reset_session=True)
    lambdapool.Database("postgresql://u@h/db", pooler="rds-proxy", reset_session=True)
    warnings = [r for r in caplog.records if "pins the session" in r.getMessage()]
    assert len(warnings) == 1


# -- PgBouncer -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_pgbouncer_transaction_mode_50_instances_no_missing_prepared_statements(pg, make_db, driver):
    from lambdapool.tools.testing.pgbouncer import PgBouncer, PgBouncerNotFound

    try:
        bouncer = PgBouncer(pg, pool_mode="transaction", default_pool_size=5).start()
    except PgBouncerNotFound as exc:
        from lambdapool.tools.testing.pytest_plugin import missing

        missing("pgbouncer", str(exc))
    errors: list[BaseException] = []
    try:
        dbs = [make_db(bouncer.dsn, driver=driver, pooler="pgbouncer",
                       pgbouncer_admin_dsn=bouncer.admin_dsn) for _ in range(50)]  # fmt: skip
        handlers = [workload(db) for db in dbs]

        def instance(handler) -> None:
            try:
                for _ in range(20):
                    handler({}, LambdaContext())
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=instance, args=(h,)) for h in handlers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        described = dbs[0].adapter.describe()
    finally:
        bouncer.stop()
    assert not errors, errors[:3]
    assert sum(db.stats()["invocations"] for db in dbs) == 1000
    pools = [p for p in described["pools"] if p.get("database") == "postgres"]
    assert pools, described["pools"]
    pool = pools[0]
    assert int(pool["cl_active"]) + int(pool["cl_waiting"]) == 50  # the 50 warm instances
    assert int(pool["sv_active"]) + int(pool["sv_idle"]) + int(pool["sv_used"]) <= 5  # the pool
    assert any(int(s.get("total_xact_count", 0)) > 0 for s in described["stats"])


# -- the registry --------------------------------------------------------------------------------


def install_acme_pooler(tmp_path, body: str) -> dict[str, str]:
    """A real installed distribution (a .dist-info on sys.path), as pip would leave it; returns
    the environment that puts it on the path."""
    dist = tmp_path / "acme_pooler-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-pooler\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lambdapool.poolers]\nacme = acme_pooler:AcmeAdapter\n")
    (tmp_path / "acme_pooler.py").write_text(textwrap.dedent(body))
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))


def test_a_third_party_adapter_is_found_through_its_entry_point(tmp_path):
    env = install_acme_pooler(
        tmp_path,
        """
        from lambdapool.adapters.base import Adapter

        class AcmeAdapter(Adapter):
            name = "acme"

            def describe(self):
                return {"pooler": "acme", "made_by": "a third party"}
    """,
    )
    code = (
        "import lambdapool; db = lambdapool.Database('postgresql://u@h/db', pooler='acme');"
        "print(db.adapter.describe()['made_by'], 'acme' in __import__('lambdapool.adapters').adapters.available())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "a third party True"


def test_the_example_adapter_in_adapters_example_works_as_installed(tmp_path):
    """adapters/example (the guide's complete adapter) with the entry point its pyproject.toml declares."""
    example = Path(__file__).resolve().parents[2] / "adapters" / "example"
    declared = re.search(r'^acme = "(.+)"$', (example / "pyproject.toml").read_text(), re.M).group(1)
    assert declared == "acme_pooler:AcmeAdapter"
    env = install_acme_pooler(tmp_path, (example / "acme_pooler.py").read_text())
    code = (
        "import lambdapool, json; "
        "db = lambdapool.Database.from_env(dsn='postgresql://u@h/db', pooler='acme', driver='asyncpg');"
        "print(json.dumps([db.adapter.describe()['statement_cache'], db.adapter.driver_options()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [False, {"statement_cache_size": 0}]
    env["LAMBDAPOOL_ACME_STATEMENT_CACHE"] = "true"  # its own setting, from the environment
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [True, {}]


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_a_third_party_keep_warm_is_asked_after_every_invocation(pg, tmp_path, driver):
    # The warm path skips keep_warm when the adapter cannot close (Adapter.may_close); a plugin
    # that has its own keep_warm must still be asked every time.
    env = install_acme_pooler(
        tmp_path,
        """
        from lambdapool.adapters.base import Adapter

        class AcmeAdapter(Adapter):
            name = "acme"
            asked = 0

            def keep_warm(self, driver, conn, refused):
                type(self).asked += 1
                return False

            async def akeep_warm(self, driver, conn, refused):
                return self.keep_warm(driver, conn, refused)
    """,
    )
    handler = (
        "def handler(event, context):\n    with db.connection() as conn: conn.execute('SELECT 1')\n"
        if driver == "psycopg"
        else "async def handler(event, context):\n"
        "    async with db.connection() as conn: await conn.execute('SELECT 1')\n"
    )
    code = (
        f"import lambdapool, acme_pooler\ndb = lambdapool.Database({pg.dsn!r}, driver={driver!r}, pooler='acme')\n"
        + handler
        + "handler = db.lambda_handler(handler)\n"
        "for _ in range(3): handler({}, None)\n"
        "print(acme_pooler.AcmeAdapter.asked, db.stats()['connects'], db.stats()['guard_closes'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "3", "3"]  # asked each time; each "no" closed the connection


def test_tls_bundle_not_found_names_the_amazon_roots():
    with pytest.raises(lambdapool.ConfigError, match="ssl_ca_file.*not found.*Amazon Trust Services"):
        lambdapool.Database("postgresql://u@h/db", pooler="rds-proxy", ssl_ca_file="/nonexistent/ca.pem")


def test_rds_proxy_refuses_plaintext():
    with pytest.raises(lambdapool.ConfigError, match="must use TLS"):
        lambdapool.Database("postgresql://u@h/db?sslmode=disable", pooler="rds-proxy")


def test_unreadable_secret_names_it_and_the_permission(aws_env, make_db):
    with mock_aws():
        db = make_db("postgresql://127.0.0.1:1/postgres",
                     secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:missing")  # fmt: skip
        with pytest.raises(lambdapool.LambdapoolError, match="missing") as info:
            query_handler(db)({}, LambdaContext())
    assert isinstance(info.value, (lambdapool.ConfigError, lambdapool.AuthError))


def test_iam_token_never_appears_in_errors_or_logs(pg, aws_env, make_db, caplog):
    import logging

    caplog.set_level(logging.DEBUG, logger="lambdapool")  # botocore's own DEBUG logs print signatures
    # The proxy knows other keys than the ones the token is signed with: the token is refused.
    with mock_aws(), LocalProxy(backend=pg.dsn, auth="iam", iam_credentials={"AKIAOTHER": "other"},
                                region="us-east-1") as proxy:  # fmt: skip
        db = make_db(f"postgresql://postgres@{proxy.host}:{proxy.port}/postgres", pooler="local", iam_auth=True)
        with pytest.raises(lambdapool.AuthError) as info:
            query_handler(db)({}, LambdaContext())
        token = db.adapter.credentials.get().password
    assert "X-Amz-Signature" in token  # a real token was made and sent
    ours = "".join(r.getMessage() for r in caplog.records if r.name.startswith("lambdapool"))
    text = str(info.value) + ours + repr(db) + repr(db.adapter.credentials)
    assert token not in text and token.split("X-Amz-Signature=")[1] not in text
