"""The password in a DSN never shows in logs, reprs or errors."""

from __future__ import annotations

import logging

import pytest

import lambdapool
from tests.support import LambdaContext, query_handler

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
