"""Pinning by RDS Proxy's PostgreSQL rules, the reset after a pinned session, and startup
parameters that follow the client from backend to backend."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lambdapool.tools.proxy.pinning import pin_reasons


@pytest.mark.parametrize(
    "sql, reasons",
    [
        ("SELECT 1", []),
        ("SET search_path = app", ["set"]),
        ("set local statement_timeout = 5", []),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", []),
        ("SELECT set_config('app.user', 'x', false)", ["set_config"]),
        ("SELECT set_config('app.user', 'x', true)", []),
        ("RESET ALL", ["reset"]),
        ("PREPARE p AS SELECT 1", ["prepare"]),
        ("EXECUTE p", ["execute"]),
        ("DEALLOCATE ALL", ["deallocate"]),
        ("DISCARD ALL", ["discard"]),
        ("CREATE TEMP TABLE tt (a int)", ["temporary_table"]),
        ("create temporary sequence s", ["temporary_sequence"]),
        ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", ["temporary_view"]),
        ("SELECT * INTO TEMP tt FROM t", ["temporary_table"]),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", ["cursor"]),
        ("LISTEN channel", ["listen"]),
        ("LOAD 'auto_explain'", ["load"]),
        ("SELECT pg_advisory_lock(1)", ["advisory_lock"]),
        ("SELECT pg_try_advisory_lock_shared(1)", ["advisory_lock"]),
        ("SELECT pg_advisory_xact_lock(1)", []),
        ("SELECT 'SET x = 1' -- SET y = 2", []),
        ("/* note */ SET x.y = 1", ["set"]),
        ("SELECT 1; SET x.y = 1", ["set"]),
        ("SELECT '" + "x" * 17000 + "'", ["statement_over_16kb"]),
    ],
)
def test_pin_rules(sql, reasons):
    assert pin_reasons(sql, in_transaction=False) == reasons


def test_cursor_pins_only_outside_a_transaction():
    assert pin_reasons("DECLARE c CURSOR FOR SELECT 1", in_transaction=False) == ["cursor"]
    assert pin_reasons("DECLARE c CURSOR FOR SELECT 1", in_transaction=True) == []


def test_session_state_pins_is_counted_and_reset_before_reuse(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=1)
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        conn.execute("SET search_path = pinned_schema")
        conn.execute("CREATE TEMP TABLE scratch (a int)")
        conn.execute("SELECT pg_advisory_lock(42)")
        assert conn.execute("SHOW search_path").fetchone() == ("pinned_schema",)  # same backend, pinned
        stats = proxy.stats()
        assert stats["pinned_sessions"] == 1
        assert stats["pin_reasons"] == {"set": 1}  # the statement that pinned; later ones are not parsed
        assert stats["backends_in_use"] == 1  # held between statements
    with psycopg.connect(proxy.dsn, autocommit=True) as other:  # the only backend, reset
        assert other.execute("SHOW search_path").fetchone() == ('"$user", public',)
        assert other.execute("SELECT to_regclass('pg_temp.scratch')").fetchone() == (None,)
        assert other.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)
    stats = proxy.stats()
    assert stats["resets"] == 1 and stats["pinned_sessions"] == 1


def test_transaction_scoped_state_does_not_pin(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=1)
    with psycopg.connect(proxy.dsn) as conn:
        conn.execute("SET LOCAL statement_timeout = '5s'")
        conn.execute("SELECT pg_advisory_xact_lock(7)")
        conn.execute("DECLARE c CURSOR FOR SELECT 1")
        conn.commit()
    assert proxy.stats()["pinned_sessions"] == 0


def test_startup_parameters_follow_the_client_to_each_backend(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=1)
    a = psycopg.connect(proxy.dsn, autocommit=True, application_name="alpha", options="-c statement_timeout=1234")
    b = psycopg.connect(proxy.dsn, autocommit=True, application_name="beta", options="-c TimeZone=Asia/Tokyo")
    try:
        for _ in range(3):  # one backend, alternating clients
            assert a.execute("SELECT current_setting('application_name'), current_setting('statement_timeout'), "
                             "current_setting('TimeZone')").fetchone()[:2] == ("alpha", "1234ms")  # fmt: skip
            assert b.execute("SELECT current_setting('application_name'), current_setting('statement_timeout'), "
                             "current_setting('TimeZone')").fetchone() == ("beta", "0", "Asia/Tokyo")  # fmt: skip
        assert b.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert b.info.parameter_status("application_name") == "beta"
    finally:
        a.close()
        b.close()
    assert proxy.stats()["pinned_sessions"] == 0


KNOWN_REASONS = {"set", "reset", "prepare", "execute", "deallocate", "discard", "listen", "load", "cursor",
                 "set_config", "advisory_lock", "temporary_table", "temporary_sequence", "temporary_view",
                 "statement_over_16kb"}  # fmt: skip


@settings(max_examples=200)
@given(sql=st.text(max_size=200), in_transaction=st.booleans())
def test_pin_rules_never_raise_and_name_known_reasons(sql, in_transaction):
    assert set(pin_reasons(sql, in_transaction=in_transaction)) <= KNOWN_REASONS


@settings(max_examples=200)
@given(text=st.text(max_size=200))
def test_sql_inside_string_literals_and_comments_never_pins(text):
    literal = "'" + text.replace("'", "''") + "'"
    comment = "/* " + text.replace("*/", "") + " */"
    assert pin_reasons(f"SELECT {literal} {comment}", in_transaction=False) == []
