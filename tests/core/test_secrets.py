"""The password in a DSN never shows in logs, reprs or errors."""

from __future__ import annotations

import logging
import traceback

import pytest

import lambdapool
from lambdapool._scrub import DriverError
from tests.support import DRIVERS, LambdaContext, query_handler

PASSWORD = "Sup3r-Secret-Pw"


@pytest.fixture
def scram_pg(pg_factory):
    return pg_factory(password=PASSWORD)


def test_password_absent_from_reprs(scram_pg):
    db = lambdapool.Database(scram_pg.dsn)
    assert PASSWORD in scram_pg.dsn  # the test would be meaningless otherwise
    for text in (repr(db), str(db), repr(db.settings), repr(db.settings.parts), repr(db.adapter.base_params())):
        assert PASSWORD not in text
    db.close()


def test_good_password_connects_over_scram(scram_pg, make_db):
    db = make_db(scram_pg.dsn)
    assert isinstance(query_handler(db)({}, LambdaContext()), int)


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_wrong_password_gives_auth_error_without_the_password(scram_pg, make_db, caplog, driver):
    wrong = "Wr0ng-Pw-Value"
    db = make_db(scram_pg.dsn.replace(PASSWORD, wrong), driver=driver)
    caplog.set_level(logging.DEBUG, logger="lambdapool")
    with pytest.raises(lambdapool.AuthError) as info:
        query_handler(db)({}, LambdaContext())
    text = str(info.value) + "".join(r.getMessage() for r in caplog.records)
    assert "rejected the credentials" in str(info.value)
    assert wrong not in text and PASSWORD not in text


def test_connection_unavailable_message_has_no_password(pg_factory, make_db, caplog):
    from lambdapool.testing import free_port

    caplog.set_level(logging.DEBUG, logger="lambdapool")
    db = make_db(f"postgresql://app:{PASSWORD}@127.0.0.1:{free_port()}/db", acquire_timeout=0.5)
    with pytest.raises(lambdapool.ConnectionUnavailable) as info:
        with db.connection():
            pass
    assert "refused" in str(info.value).lower()
    assert PASSWORD not in str(info.value) and PASSWORD not in caplog.text


# -- No secret reachable from anything an error reporter renders (issue 19, bug 7) ---------------

AT_PASSWORD = "ab@cd-S3CR3T-tail"  # an unencoded "@": urlsplit takes the password up to the last "@"


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://app:{AT_PASSWORD}@db.example:5432/orders",
        f"postgresql://app:{AT_PASSWORD}@db.example/orders?sslmode=require",
        f"host=db.example user=app password={AT_PASSWORD} dbname=orders",
        f"host=db.example user=app password='{AT_PASSWORD} x' dbname=orders",
    ],
)
def test_a_password_with_any_characters_is_hidden_whole(dsn):
    db = lambdapool.Database(dsn, pgbouncer_admin_dsn=f"postgresql://admin:{AT_PASSWORD}@db.example/pgbouncer",
                             pooler="pgbouncer")  # fmt: skip
    assert AT_PASSWORD in db.settings.parts.password  # what is sent: the whole of it
    for text in (repr(db), str(db), repr(db.settings), str(db.settings), repr(db.settings.parts)):
        for part in ("S3CR3T", "tail", "cd-"):
            assert part not in text, text
    assert "db.example" in repr(db) and "orders" in repr(db)  # still says where
    db.close()


def reachable_text(error: BaseException) -> str:
    """What an error reporter can show of ``error``: its traceback with every frame's locals
    (as Sentry captures them), following ``__cause__`` and ``__context__``; and for each
    exception of the chain its repr, str, args and attributes, and theirs, three levels down
    (psycopg's error holds its connection's conninfo in ``pgconn.info``)."""
    texts = ["".join(traceback.TracebackException.from_exception(error, capture_locals=True).format())]
    seen: set[int] = set()
    todo: list[tuple[object, int]] = [(error, 0)]
    while todo:
        obj, depth = todo.pop()
        if obj is None or id(obj) in seen or depth > 3:
            continue
        seen.add(id(obj))
        try:
            texts.append(repr(obj))
        except Exception:
            pass
        if isinstance(obj, (str, bytes, int, float, bool)):
            if isinstance(obj, bytes):
                texts.append(obj.decode("utf-8", "replace"))
            continue
        if isinstance(obj, BaseException):
            texts += [str(obj), repr(obj.args)]
            todo += [(obj.__cause__, 0), (obj.__context__, 0)]
        if isinstance(obj, dict):
            todo += [(value, depth + 1) for value in obj.values()]
        elif isinstance(obj, (list, tuple, set)):
            todo += [(value, depth + 1) for value in obj]
        for name in dir(obj):
            if name.startswith("__"):
                continue
            try:
                value = getattr(obj, name)
            except Exception:
                continue
            if not callable(value) or isinstance(value, BaseException):
                todo.append((value, depth + 1))
    return "\n".join(texts)


SECRET_KINDS = ["password", "iam-token", "secrets-manager"]
WRONG = "Wr0ng-S3CR3T-pw"
SM_WRONG = "Sm-Wr0ng-S3CR3T"


@pytest.fixture(scope="module")
def password_server(pg_session_factory):
    return pg_session_factory(password=PASSWORD)


def _failing_db(request, kind: str, port: int, driver: str) -> tuple[lambdapool.Database, list[str]]:
    """A Database whose credentials of ``kind`` are wrong (or whose server is not there), and the
    strings that must not be reachable from its errors."""
    from urllib.parse import quote

    settings: dict = {"driver": driver, "acquire_timeout": 3.0}  # (a loaded machine took 1.3 s to fetch a secret)
    secrets = [PASSWORD]
    if kind == "password":
        dsn = f"postgresql://postgres:{quote(WRONG, safe='')}@127.0.0.1:{port}/postgres"
        secrets.append(WRONG)
    elif kind == "iam-token":
        import os

        request.getfixturevalue("aws_env")
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        settings["iam_auth"] = True
        # Any piece of a token names its query parameters; the key that signs it is secret too.
        secrets += ["X-Amz-Signature", "X-Amz-Credential", "Action=connect", os.environ["AWS_SECRET_ACCESS_KEY"]]
    else:
        from lambdapool.tools.testing.moto import create_secret

        moto_url = request.getfixturevalue("moto_url")
        arn = create_secret("db/app", {"username": "postgres", "password": SM_WRONG}, endpoint_url=moto_url)
        request.getfixturevalue("monkeypatch").setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_url)
        dsn = f"postgresql://127.0.0.1:{port}/postgres"
        settings.update(secret_arn=arn, aws_endpoint_url=moto_url)
        secrets.append(SM_WRONG)
    db = lambdapool.Database(dsn, **settings)
    request.addfinalizer(db.close)
    return db, secrets


def _error_of(handler) -> BaseException:
    """The handler's error, caught here (this frame's locals hold nothing secret)."""
    try:
        handler({}, LambdaContext())
    except lambdapool.LambdapoolError as error:
        return error
    raise AssertionError("the handler did not fail")


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("kind", SECRET_KINDS)
def test_auth_error_keeps_no_secret_reachable(request, password_server, driver, kind):
    db, secrets = _failing_db(request, kind, password_server.port, driver)
    error = _error_of(query_handler(db))
    assert isinstance(error, lambdapool.AuthError)
    text = reachable_text(error)
    assert [s for s in secrets if s in text] == []
    cause = error.__cause__  # what the driver said is kept: class, SQLSTATE, message
    assert "password authentication failed" in str(cause)
    assert cause.driver_class in ("psycopg.OperationalError", "asyncpg.exceptions.InvalidPasswordError")
    assert cause.sqlstate == ("28P01" if driver == "asyncpg" else None)
    assert error.__context__ is None and cause.__traceback__ is None


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("kind", SECRET_KINDS)
def test_connection_unavailable_keeps_no_secret_reachable(request, driver, kind):
    from lambdapool.testing import free_port

    db, secrets = _failing_db(request, kind, free_port(), driver)  # nothing listens there
    error = _error_of(query_handler(db))
    assert isinstance(error, lambdapool.ConnectionUnavailable)
    text = reachable_text(error)
    assert [s for s in secrets if s in text] == []
    # what the server said is kept: the last error, or (when the deadline cut the last attempt
    # short, as it does on a loaded machine: "TimeoutError") the one before it, in the message
    assert "refused" in str(error).lower()
    assert isinstance(error.__cause__, DriverError)
    assert error.__context__ is None and error.__cause__.__traceback__ is None
