"""RDS Proxy's own errors: the local proxy sends its texts where it emulates the condition, and
the SDK retries the transient ones inside the deadline and fails at once, naming the fix, on
the one only a setting cures. Through the real local proxy, with psycopg and asyncpg."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

import lambdapool
from lambdapool._drivers.base import classify_connect_error, connect_error_fix
from lambdapool.testing import wait_for
from lambdapool.tools.testing.moto import signing_keys
from tests.support import LambdaContext, query_handler

SDK_DRIVERS = ["psycopg", "asyncpg"]
BORROW = "Timed-out waiting to acquire database connection"
CLIENT_CAP = "The maximum number of client connections to the proxy exceeded"
RATE = "Rate of connection to proxy exceeded"
COMPETING = "The IAM authentication failed because of too many competing requests"
IAM_TLS = "IAM is allowed only with SSL connections"
SHORT_MS = 2000  # an invocation whose condition never clears: it ends within this


def when(condition: Callable[[], bool], action: Callable[[], object], what: str) -> threading.Thread:
    """Run ``action`` on a thread once ``condition`` holds (e.g. the SDK was refused once)."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            wait_for(condition, what, timeout=60)  # (a safety net: it normally holds within ms)
            action()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.failures = failures  # type: ignore[attr-defined]
    thread.start()
    return thread


def joined(thread: threading.Thread) -> None:
    thread.join(60)
    assert not thread.is_alive() and not thread.failures, thread.failures  # type: ignore[attr-defined]


def sdk(make_db, proxy, driver: str, sslmode: str | None = None, **settings):
    """A Database on the local proxy (pooler "local", the rds-proxy code path) and its handler."""
    query = f"?sslmode={sslmode}" if sslmode else ""
    db = make_db(f"postgresql://postgres@{proxy.host}:{proxy.port}/postgres{query}", driver=driver,
                 pooler="local", acquire_timeout=30, **settings)  # fmt: skip
    return db, query_handler(db)


# -- the classification itself -------------------------------------------------------------


class _PgError(Exception):
    """Stands in for a driver's error: a message and, like asyncpg's, a SQLSTATE."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(("message", "sqlstate", "kind"), [
    ("Timed-out waiting to acquire database connection.", None, "retry"),
    ("Rate of connection to proxy exceeded 100.", None, "retry"),
    ("The maximum number of client connections to the proxy exceeded 1000.", None, "retry"),
    ("The IAM authentication failed because of too many competing requests.", None, "retry"),
    ("The IAM authentication failed because of too many competing requests.", "28000", "retry"),
    ("The IAM authentication failed because of too many competing requests.", "28P01", "retry"),
    ("IAM is allowed only with SSL connections.", "28000", "config"),
    ("IAM authentication is allowed only with SSL connections.", None, "config"),
    ("This RDS Proxy requires TLS connections.", "28000", "config"),
    ("IAM authentication failed for user app. Check the IAM token for this user and try again.", None, "auth"),
    ("The IAM authentication failed for the role app. Check the IAM token for this role and try again.", None, "auth"),
    ("The password that was provided for the role app is wrong.", "28P01", "auth"),
    ('password authentication failed for user "app"', None, "auth"),
    ("sorry, too many clients already", "53300", "retry"),
    ('database "nope" does not exist', "3D000", "fatal"),
])  # fmt: skip
def test_rds_proxy_texts_are_classified(message, sqlstate, kind):
    assert classify_connect_error(_PgError(message, sqlstate)) == kind
    if kind == "config":
        assert "sslmode=require" in connect_error_fix(_PgError(message))  # type: ignore[operator]


# -- what the local proxy sends ------------------------------------------------------------


def test_the_proxy_sends_rds_proxys_texts_and_sqlstates(make_proxy):
    """Seen by asyncpg, which reports the SQLSTATE of a refused login (libpq gives none)."""
    import asyncpg
    import psycopg

    capped = make_proxy(max_backends=1, max_client_connections=1)
    rated = make_proxy(max_backends=1, max_connection_rate=0.01)
    borrowing = make_proxy(max_backends=1, borrow_on_connect=True, borrow_timeout=0.2)
    iam = make_proxy(max_backends=1, auth="iam", iam_credentials=signing_keys(), tls=True)
    hogs = [psycopg.connect(capped.dsn), psycopg.connect(rated.dsn), psycopg.connect(borrowing.dsn)]
    hogs[2].execute("SELECT 1")  # in a transaction: it holds the only backend

    async def refusal(dsn: str, **kwargs: object) -> BaseException:
        try:
            conn = await asyncpg.connect(dsn, **kwargs)
        except Exception as exc:
            return exc
        await conn.close()
        raise AssertionError(f"{dsn} let the client in")

    async def main() -> list[BaseException]:
        return [await refusal(capped.dsn), await refusal(rated.dsn), await refusal(borrowing.dsn),
                await refusal(iam.dsn, ssl="disable", password="a-token")]  # fmt: skip

    try:
        errors = asyncio.run(main())
    finally:
        for conn in hogs:
            conn.close()
    got = [(e.sqlstate, str(e)) for e in errors]  # type: ignore[attr-defined]
    assert got[0][0] == "53300" and got[0][1].startswith(f"{CLIENT_CAP} 1. ("), got
    assert got[1][0] == "53400" and got[1][1].startswith(f"{RATE} 0.01. ("), got
    assert got[2][0] == "53300" and got[2][1].startswith(f"{BORROW}. ("), got
    assert got[3][0] == "28000" and got[3][1].startswith(f"{IAM_TLS}. ("), got
    assert capped.stats()["client_cap_refusals"] == 1 and rated.stats()["rate_refusals"] == 1
    assert borrowing.stats()["borrow_timeouts"] == 1 and iam.stats()["auth_failures"] == 1


def test_borrow_timeout_on_a_statement_carries_rds_proxys_text(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=1, borrow_timeout=0.2)
    with psycopg.connect(proxy.dsn) as holder, psycopg.connect(proxy.dsn, autocommit=True) as late:
        holder.execute("SELECT 1")
        with pytest.raises(psycopg.errors.TooManyConnections, match=f"^{BORROW}\\. \\(lambdapool local proxy"):
            late.execute("SELECT 2")
        holder.commit()
        assert late.execute("SELECT 3").fetchone() == (3,)


def test_competing_iam_fault_counts_down_and_stops(make_proxy, aws_env):
    import boto3
    import psycopg

    proxy = make_proxy(max_backends=1, auth="iam", iam_credentials=signing_keys(), region="us-east-1")
    token = boto3.client("rds", region_name="us-east-1").generate_db_auth_token(
        DBHostname=proxy.host, Port=proxy.port, DBUsername="postgres", Region="us-east-1"
    )
    proxy.throttle_iam(1)
    with pytest.raises(psycopg.OperationalError, match=COMPETING):
        psycopg.connect(proxy.dsn, password=token)
    psycopg.connect(proxy.dsn, password=token).close()  # the count ran out
    proxy.throttle_iam(True)
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError, match=COMPETING):
            psycopg.connect(proxy.dsn, password=token)
    proxy.throttle_iam(False)
    psycopg.connect(proxy.dsn, password=token).close()
    stats = proxy.stats()
    assert stats["iam_throttled"] == 3 and stats["auth_failures"] == 0  # not a bad credential


def test_settings_are_checked(make_proxy):
    from lambdapool.testing import LocalProxy

    with pytest.raises(lambdapool.ConfigError, match="max_connection_rate"):
        LocalProxy("postgresql://postgres@127.0.0.1:1/postgres", max_connection_rate=0)
    proxy = make_proxy(max_backends=1)
    with pytest.raises(lambdapool.ConfigError, match="throttle_iam"):
        proxy.throttle_iam(-1)


# -- the SDK: transient conditions that clear cost no failed invocation ---------------------


@pytest.mark.parametrize("driver", SDK_DRIVERS)
def test_client_cap_that_clears_is_retried(make_proxy, make_db, driver):
    import psycopg

    proxy = make_proxy(max_backends=2, max_client_connections=1)
    hog = psycopg.connect(proxy.dsn)
    db, handler = sdk(make_db, proxy, driver)
    freer = when(lambda: proxy.stats()["client_cap_refusals"] >= 1, hog.close, "the SDK to be refused")
    assert isinstance(handler({}, LambdaContext()), int)
    joined(freer)
    assert db.stats()["connect_retries"] >= 1 and db.stats()["connects"] == 1


@pytest.mark.parametrize("driver", SDK_DRIVERS)
def test_borrow_timeout_at_login_that_clears_is_retried(make_proxy, make_db, driver):
    import psycopg

    proxy = make_proxy(max_backends=1, borrow_on_connect=True, borrow_timeout=0.2)
    hog = psycopg.connect(proxy.dsn)
    hog.execute("SELECT 1")  # a transaction holds the only backend
    db, handler = sdk(make_db, proxy, driver)
    freer = when(lambda: proxy.stats()["borrow_timeouts"] >= 1, hog.close, "a login to time out")
    assert isinstance(handler({}, LambdaContext()), int)
    joined(freer)
    assert db.stats()["connect_retries"] >= 1 and db.stats()["connects"] == 1


@pytest.mark.parametrize("driver", SDK_DRIVERS)
def test_connection_rate_that_clears_is_retried(make_proxy, make_db, driver):
    import psycopg

    # One login every 2 s: the hog takes this second's; the SDK is refused until the next.
    proxy = make_proxy(max_backends=2, max_connection_rate=0.5)
    psycopg.connect(proxy.dsn).close()
    db, handler = sdk(make_db, proxy, driver)
    assert isinstance(handler({}, LambdaContext()), int)
    assert proxy.stats()["rate_refusals"] >= 1
    assert db.stats()["connect_retries"] >= 1 and db.stats()["connects"] == 1


@pytest.mark.parametrize("driver", SDK_DRIVERS)
def test_competing_iam_requests_are_retried_not_an_auth_error(make_proxy, make_db, aws_env, driver):
    proxy = make_proxy(max_backends=1, auth="iam", iam_credentials=signing_keys(), region="us-east-1")
    proxy.throttle_iam(2)  # the first two logins are throttled
    db, handler = sdk(make_db, proxy, driver, iam_auth=True)
    assert isinstance(handler({}, LambdaContext()), int)
    stats = db.stats()
    assert stats["connect_retries"] == 2 and stats["connects"] == 1
    assert stats.get("auth_refreshes", 0) == 0, "a throttled login is not a rejected token"
    assert proxy.stats()["iam_throttled"] == 2 and proxy.stats()["auth_failures"] == 0


# -- ... and ones that do not clear end in ConnectionUnavailable naming the proxy's text ---


def _unavailable(handler) -> str:
    with pytest.raises(lambdapool.ConnectionUnavailable) as info:
        handler({}, LambdaContext(remaining_ms=SHORT_MS))
    assert info.value.__cause__ is not None
    return str(info.value)


@pytest.mark.parametrize("driver", SDK_DRIVERS)
def test_client_cap_that_stays_ends_in_connection_unavailable(make_proxy, make_db, driver):
    import psycopg

    proxy = make_proxy(max_backends=1, max_client_connections=1)
    with psycopg.connect(proxy.dsn):
        db, handler = sdk(make_db, proxy, driver)
        assert CLIENT_CAP in _unavailable(handler)
    assert db.stats()["connect_retries"] >= 1


@pytest.mark.parametrize("driver", SDK_DRIVERS)
def test_borrow_timeout_that_stays_ends_in_connection_unavailable(make_proxy, make_db, driver):
    import psycopg

    proxy = make_proxy(max_backends=1, borrow_on_connect=True, borrow_timeout=0.2)
    with psycopg.connect(proxy.dsn) as hog:
        hog.execute("SELECT 1")
        db, handler = sdk(make_db, proxy, driver)
        assert BORROW in _unavailable(handler)
    assert db.stats()["connect_retries"] >= 1


@pytest.mark.parametrize("driver", SDK_DRIVERS)
def test_connection_rate_that_stays_ends_in_connection_unavailable(make_proxy, make_db, driver):
    import psycopg

    proxy = make_proxy(max_backends=1, max_connection_rate=0.01)  # one login per 100 s
    psycopg.connect(proxy.dsn).close()
    db, handler = sdk(make_db, proxy, driver)
    assert RATE in _unavailable(handler)
    assert db.stats()["connect_retries"] >= 1


@pytest.mark.parametrize("driver", SDK_DRIVERS)
def test_competing_iam_requests_that_stay_end_in_connection_unavailable(make_proxy, make_db, aws_env, driver):
    proxy = make_proxy(max_backends=1, auth="iam", iam_credentials=signing_keys(), region="us-east-1")
    proxy.throttle_iam(True)
    db, handler = sdk(make_db, proxy, driver, iam_auth=True)
    assert COMPETING in _unavailable(handler)
    assert db.stats()["connect_retries"] >= 1 and proxy.stats()["auth_failures"] == 0


# -- a rejected token is still an AuthError; IAM without TLS fails at once, naming the fix --


@pytest.mark.parametrize("driver", SDK_DRIVERS)
def test_a_rejected_iam_token_is_still_an_auth_error(make_proxy, make_db, aws_env, driver):
    proxy = make_proxy(max_backends=1, auth="iam", iam_credentials={"AKIAOTHER": "other"}, region="us-east-1")
    db, handler = sdk(make_db, proxy, driver, iam_auth=True)
    with pytest.raises(lambdapool.AuthError, match="PAM authentication failed"):
        handler({}, LambdaContext())
    assert db.stats()["connect_retries"] == 0


@pytest.mark.parametrize("driver", SDK_DRIVERS)
def test_iam_without_tls_fails_at_once_naming_sslmode(make_proxy, make_db, aws_env, driver):
    proxy = make_proxy(max_backends=1, auth="iam", iam_credentials=signing_keys(), region="us-east-1", tls=True)
    db, handler = sdk(make_db, proxy, driver, iam_auth=True, sslmode="disable")
    with pytest.raises(lambdapool.ConfigError) as info:
        handler({}, LambdaContext())
    message = str(info.value)
    assert IAM_TLS in message and "sslmode=require" in message
    assert "X-Amz-Signature" not in message  # (the token never reached the proxy, nor the message)
    stats = db.stats()
    assert stats["connect_failures"] == 1 and stats["connect_retries"] == 0  # one attempt
    assert proxy.stats()["auth_failures"] == 1


@pytest.mark.parametrize("driver", SDK_DRIVERS)
def test_iam_over_tls_is_let_in(make_proxy, make_db, aws_env, driver):
    proxy = make_proxy(max_backends=1, auth="iam", iam_credentials=signing_keys(), region="us-east-1", tls=True)
    _, handler = sdk(make_db, proxy, driver, iam_auth=True, sslmode="require")
    assert isinstance(handler({}, LambdaContext()), int)
    assert proxy.stats()["auth_failures"] == 0


@pytest.mark.parametrize("driver", SDK_DRIVERS)
def test_require_tls_without_tls_fails_at_once_naming_sslmode(make_proxy, make_db, driver):
    proxy = make_proxy(max_backends=1, tls=True, require_tls=True)
    db, handler = sdk(make_db, proxy, driver, sslmode="disable")
    with pytest.raises(lambdapool.ConfigError, match="requires TLS connections.*sslmode=require"):
        handler({}, LambdaContext())
    assert db.stats()["connect_failures"] == 1 and db.stats()["connect_retries"] == 0
