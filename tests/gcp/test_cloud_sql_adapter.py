"""pooler="cloud-sql" / "cloud-sql-pooler": IAM logins end to end against a real Postgres behind the
local proxy in Cloud SQL IAM mode (tokens checked with the metadata emulator that issued them),
every driver; what the settings become; and no AWS, no google library on the metadata path."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import lambdapool
from lambdapool.adapters.pgbouncer import PgBouncerAdapter
from lambdapool.testing import LocalProxy, MetadataServer
from tests.core.test_secrets import _error_of, reachable_text
from tests.support import DRIVERS, LambdaContext, query_handler

EMAIL = "orders-fn@shop-prod.iam.gserviceaccount.com"
POOLERS = ["cloud-sql", "cloud-sql-pooler"]
REFUSAL = "Cloud SQL IAM service account authentication failed for user"


@pytest.fixture
def pg(pg_factory):
    return pg_factory(max_connections=30)


@pytest.fixture
def metadata(monkeypatch):
    with MetadataServer(email=EMAIL) as server:
        monkeypatch.setenv("GCE_METADATA_HOST", server.host)
        yield server


@pytest.fixture
def no_aws(monkeypatch):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def cloud_sql_proxy(pg, metadata: MetadataServer) -> LocalProxy:
    """Cloud SQL as the function sees it over TCP: IAM logins, TLS."""
    return LocalProxy(backend=pg.dsn, auth="cloud-sql-iam", metadata=metadata, tls=True)


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pooler", POOLERS)
@pytest.mark.parametrize("driver", DRIVERS)
def test_iam_login_with_the_metadata_servers_token(pg, metadata, no_aws, make_db, driver, pooler):
    with cloud_sql_proxy(pg, metadata) as proxy:
        db = make_db(f"postgresql://{proxy.host}:{proxy.port}/postgres", driver=driver, pooler=pooler, iam_auth=True)
        handler = query_handler(db)
        assert isinstance(handler({}, LambdaContext()), int)
        assert handler({"sql": "SELECT 2"}, LambdaContext()) == 2
        described = db.adapter.describe()
    # the user came from the email; TLS was used (the proxy takes tokens over TLS only)
    assert (metadata.token_requests, metadata.email_requests) == (1, 1)
    assert described["auth"] == "iam" and described["tls"] == "require" and described["credential_fetches"] == 1
    assert db.stats()["connects"] == 1 and db.stats()["auth_refreshes"] == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_rejected_login_is_fetched_once_more_then_an_auth_error(pg, metadata, no_aws, make_db, driver):
    # The proxy trusts another metadata server: every token this function gets is unknown to it.
    with MetadataServer(email=EMAIL) as other, cloud_sql_proxy(pg, other) as proxy:
        db = make_db(f"postgresql://{proxy.host}:{proxy.port}/postgres", driver=driver, pooler="cloud-sql",
                     iam_auth=True, acquire_timeout=5)  # fmt: skip
        error = _error_of(query_handler(db))
        token = db.adapter.credentials.get().password
    assert isinstance(error, lambdapool.AuthError)
    assert REFUSAL in str(error) and "even after fetching them again" in str(error)
    assert metadata.token_requests == 2 and db.adapter.credentials.fetches == 2  # one fetch, one refresh
    assert db.stats()["auth_refreshes"] == 1
    assert metadata.token_status(token) == "valid" and token not in reachable_text(error)


def test_a_revoked_token_is_replaced_once_and_the_login_succeeds(pg, metadata, no_aws, make_db):
    with cloud_sql_proxy(pg, metadata) as proxy:
        db = make_db(f"postgresql://{proxy.host}:{proxy.port}/postgres", pooler="cloud-sql", iam_auth=True)
        cached = db.adapter.connect_params().password  # the token is fetched and cached
        metadata.revoke(cached)
        assert isinstance(query_handler(db)({}, LambdaContext()), int)
    assert metadata.token_status(cached) == "revoked"
    assert metadata.token_requests == 2 and db.stats()["auth_refreshes"] == 1


def test_a_user_in_the_dsn_is_the_login_user(pg, metadata, no_aws, make_db):
    with cloud_sql_proxy(pg, metadata) as proxy:
        db = make_db(f"postgresql://someone-else@{proxy.host}:{proxy.port}/postgres", pooler="cloud-sql",
                     iam_auth=True)  # fmt: skip
        error = _error_of(query_handler(db))
    # the proxy accepts only the account's user: the DSN's user was the one sent
    assert isinstance(error, lambdapool.AuthError) and 'for user "someone-else"' in str(error)
    assert metadata.email_requests == 0


def test_the_metadata_path_imports_no_google_library_and_nothing_of_aws(pg, metadata):
    """A function's process: GCE_METADATA_HOST, no AWS variable at all, a connect and a query."""
    with cloud_sql_proxy(pg, metadata) as proxy:
        code = textwrap.dedent(f"""
            import sys
            # functions-framework's *-nspkg.pth makes empty 'google' namespaces at startup: only
            # what is imported from here on counts
            before = {{m for m in sys.modules if m.split(".")[0] == "google"}}
            import lambdapool
            db = lambdapool.Database("postgresql://{proxy.host}:{proxy.port}/postgres", pooler="cloud-sql",
                                     iam_auth=True)
            with db.connection() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            db.close()
            google = sorted(m for m in sys.modules if m.split(".")[0] == "google" and m not in before)
            aws = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore", "aiobotocore")
                         or m in ("lambdapool._aws", "lambdapool.credentials.iam", "lambdapool.credentials.aws_keys"))
            print("google:", google, "aws:", aws)
        """)
        env = {"PATH": "/usr/bin:/bin", "GCE_METADATA_HOST": metadata.host, "PYTHONPATH": sys.path[0] or "."}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "google: [] aws: []"
    assert metadata.token_requests == 1


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pooler", POOLERS)
def test_both_poolers_are_built_in(pooler):
    from lambdapool import adapters

    assert pooler in adapters.available() and adapters.load(pooler).name == pooler


@pytest.mark.parametrize("pooler", POOLERS)
def test_iam_needs_no_aws_region(no_aws, pooler):
    db = lambdapool.Database("postgresql://10.0.0.5/app", pooler=pooler, iam_auth=True)
    assert db.adapter.credentials is None  # made at the first connect
    db.close()


def test_secret_arn_is_refused_by_name(no_aws):
    with pytest.raises(lambdapool.ConfigError, match="secret_arn names an AWS Secrets Manager secret.*password="):
        lambdapool.Database("postgresql://10.0.0.5/app", pooler="cloud-sql",
                            secret_arn="arn:aws:secretsmanager:us-east-1:1:secret:x")  # fmt: skip


@pytest.mark.parametrize("setting", ["region", "aws_endpoint_url", "secret_ttl"])
def test_aws_only_settings_are_unknown_here(no_aws, setting):
    value = 60.0 if setting == "secret_ttl" else "us-east-1"
    with pytest.raises(
        lambdapool.ConfigError, match=f"unknown setting {setting} for pooler 'cloud-sql'; allowed: .*iam_auth"
    ):
        lambdapool.Database("postgresql://10.0.0.5/app", pooler="cloud-sql", **{setting: value})


@pytest.mark.parametrize("weak", ["disable", "allow", "prefer"])
@pytest.mark.parametrize("pooler", POOLERS)
def test_iam_over_tcp_refuses_a_weak_sslmode(pooler, weak):
    with pytest.raises(lambdapool.ConfigError, match=f"sslmode='{weak}'.*use TLS"):
        lambdapool.Database(f"postgresql://10.0.0.5/app?sslmode={weak}", pooler=pooler, iam_auth=True)


@pytest.mark.parametrize(
    "dsn, iam, expected",
    [
        ("postgresql://10.0.0.5/app", True, "require"),  # IAM over TCP: TLS by default
        ("postgresql://10.0.0.5/app?sslmode=verify-full&sslrootcert=/ca.pem", True, "verify-full"),  # stricter kept
        ("postgresql://10.0.0.5/app", False, None),  # a password login: as the DSN says
        ("postgresql://10.0.0.5/app?sslmode=disable", False, "disable"),
        ("postgresql://u@/app?host=/cloudsql/shop-prod:europe-west1:orders", True, None),  # the connector's socket
        ("host=/cloudsql/shop-prod:europe-west1:orders dbname=app sslmode=disable", True, "disable"),
    ],
)
def test_tls_for_iam_logins_over_tcp_only(dsn, iam, expected):
    db = lambdapool.Database(dsn, pooler="cloud-sql", iam_auth=iam)
    assert db.adapter.base_params().sslmode == expected
    db.close()


@pytest.mark.parametrize(
    "dsn, port",
    [
        ("postgresql://10.0.0.5/app", 6432),  # Managed Connection Pooling's port
        ("postgresql://10.0.0.5:3307/app", 3307),  # a port given is kept
        ("postgresql://u@/app?host=/cloudsql/shop-prod:europe-west1:orders", None),  # a socket: its file's
    ],
)
def test_the_managed_pooler_listens_on_6432(dsn, port):
    db = lambdapool.Database(dsn, pooler="cloud-sql-pooler")
    params = db.adapter.connect_params()
    assert params.port == port and db.adapter.endpoint()[1] == port
    assert lambdapool.Database(dsn, pooler="cloud-sql").adapter.connect_params().port == (
        3307 if port == 3307 else None
    )
    db.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_managed_pooler_takes_pgbouncers_driver_defaults(driver):
    pooled = lambdapool.Database("postgresql://10.0.0.5/app", pooler="cloud-sql-pooler", driver=driver)
    bouncer = lambdapool.Database("postgresql://10.0.0.5/app", pooler="pgbouncer", driver=driver)
    expected = {"statement_cache_size": 0} if driver == "asyncpg" else {"prepare_threshold": None}
    assert pooled.adapter.driver_options() == bouncer.adapter.driver_options() == expected
    assert pooled.adapter.base_params().options == expected  # what the driver is given
    tracking = lambdapool.Database("postgresql://10.0.0.5/app", pooler="cloud-sql-pooler", driver=driver,
                                   pgbouncer_prepared_statements=True)  # fmt: skip
    assert tracking.adapter.driver_options() == {}
    plain = lambdapool.Database("postgresql://10.0.0.5/app", pooler="cloud-sql", driver=driver)
    assert plain.adapter.driver_options() == {}  # Cloud SQL itself: prepared statements are fine
    assert PgBouncerAdapter.driver_options is type(pooled.adapter).driver_options  # reused, not copied
    for db in (pooled, bouncer, tracking, plain):
        db.close()
