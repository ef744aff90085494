"""Encoding fidelity: a client in any client_encoding gets through the proxy what it gets direct.

Each case runs one scripted session twice, against the server directly and through the local
proxy, and compares everything the client observed: ParameterStatus, text in simple and
extended protocol (literals, parameters, named prepared statements), identifiers, errors and
notices with non-ASCII text, bytes the encoding rejects, and a pinning statement written in a
non-UTF-8 encoding (which must still pin). The server databases use LATIN1, LATIN9 and EUC_JP
as server encodings where the case needs it, and UTF8 with conversion on the server otherwise.

asyncpg reads ``client_encoding`` from ParameterStatus and maps it to a Python codec
(asyncpg/protocol/encodings.pyx) for parameters and results: LATIN1, LATIN9, EUC_JP and SJIS
work there (EUC_TW and MULE_INTERNAL have no Python codec). It encodes SQL text in UTF-8
whatever the client_encoding, so non-ASCII SQL text is wrong or an error on the server, direct
as through the proxy; the asyncpg session compares those outcomes too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from lambdapool.testing import LocalProxy, PostgresServer
from lambdapool.tools.proto.encodings import python_codec

psycopg = pytest.importorskip("psycopg")

LATIN1_TEXT = "café Ærø ß ñ"
LATIN9_TEXT = "€uro œuvre Šš Žž"
JAPANESE_TEXT = "日本語の表示テキスト"  # 表 and ソ-like chars end in 0x5C ('\\') in SJIS

DATABASES = {"UTF8": None, "LATIN1": "enc_latin1", "LATIN9": "enc_latin9", "EUC_JP": "enc_eucjp"}

# (database encoding, client_encoding, text the client sends and expects back)
CASES = {
    "utf8db-latin1": ("UTF8", "latin1", LATIN1_TEXT),
    "utf8db-latin9": ("UTF8", "LATIN9", LATIN9_TEXT),
    "utf8db-euc_jp": ("UTF8", "euc_jp", JAPANESE_TEXT),
    "latin1db-latin1": ("LATIN1", "LATIN1", LATIN1_TEXT),
    "latin9db-latin9": ("LATIN9", "latin9", LATIN9_TEXT),
    "eucjpdb-euc_jp": ("EUC_JP", "EUC_JP", JAPANESE_TEXT),
    "eucjpdb-sjis": ("EUC_JP", "SJIS", JAPANESE_TEXT),  # client-only encoding: 0x5C trail bytes
    "eucjpdb-utf8": ("EUC_JP", "UTF8", JAPANESE_TEXT),
    "latin1db-utf8": ("LATIN1", "utf-8", LATIN1_TEXT),
}


@pytest.fixture(scope="module")
def encoded_databases(proxy_pg: PostgresServer) -> dict[str, str]:
    """database encoding -> direct DSN of a database in it (template0, C locale, as Postgres requires)."""
    out = {}
    for encoding, name in DATABASES.items():
        if name is not None and not proxy_pg.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
            proxy_pg.psql(
                f"CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            )
        parts = urlsplit(proxy_pg.dsn)
        out[encoding] = urlunsplit(parts._replace(path="/" + (name or parts.path.lstrip("/"))))
    return out


@pytest.fixture
def both_ways(encoded_databases: dict[str, str]) -> Iterator[Callable[..., tuple[str, LocalProxy]]]:
    """db encoding -> (its direct DSN, a proxy in front of that database), stopped at teardown.

    (conftest's ``make_proxy`` serves proxy_pg's default database; the proxy serves the one
    database of its backend DSN, so each encoding gets its own proxy.)
    """
    started: list[LocalProxy] = []

    def make(db_encoding: str, max_backends: int = 2) -> tuple[str, LocalProxy]:
        direct = encoded_databases[db_encoding]
        proxy = LocalProxy(direct, max_backends=max_backends)
        started.append(proxy)
        return direct, proxy.start()

    try:
        yield make
    finally:
        for proxy in started:
            proxy.stop()


def with_param(dsn: str, **params: str) -> str:
    sep = "&" if "?" in dsn else "?"
    return dsn + sep + "&".join(f"{k}={v}" for k, v in params.items())


# -- psycopg ---------------------------------------------------------------------------------
def psycopg_session(dsn: str, client_encoding: str, text: str, *, via_set: bool) -> list[tuple[str, object]]:
    """Everything a psycopg client observes in one session, as comparable values."""
    codec = python_codec(client_encoding)
    seen: list[tuple[str, object]] = []
    notices: list[str | None] = []
    conn = psycopg.connect(dsn if via_set else with_param(dsn, client_encoding=client_encoding), autocommit=True)
    try:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary))
        if via_set:
            conn.execute(f"SET client_encoding TO '{client_encoding}'")
        seen.append(("ParameterStatus client_encoding", conn.info.parameter_status("client_encoding")))
        seen.append(("python encoding", conn.info.encoding))
        # simple protocol, the SQL as bytes in the client's encoding
        res = conn.pgconn.exec_(f"SELECT '{text}'::text, length('{text}'), octet_length('{text}')".encode(codec))
        seen.append(("simple", [res.get_value(0, i) for i in range(3)]))
        seen.append(("extended literal", conn.execute(f"SELECT '{text}'::text, upper('{text}')").fetchone()))
        seen.append(("extended param", conn.execute("SELECT %s::text, length(%s::text)", [text, text]).fetchone()))
        # (before any prepared statement: psycopg follows a rollback with DEALLOCATE ALL, which pins)
        with conn.transaction(force_rollback=True):
            conn.execute(f'CREATE TABLE "tbl {text}" ("col {text}" text)')
            conn.execute(f'INSERT INTO "tbl {text}" VALUES (%s)', [text])
            cur = conn.execute(f'SELECT "col {text}" FROM "tbl {text}"')
            seen.append(("identifiers", ([c.name for c in cur.description], cur.fetchall())))
        for i in range(2):  # a named prepared statement, prepared then reused
            seen.append((f"prepared {i}", conn.execute("SELECT %s::text || '!' AS r", [text], prepare=True).fetchone()))
        for label, sql in [
            ("missing relation", f'SELECT * FROM "nope {text}"'),
            ("raise", f"DO $$BEGIN RAISE EXCEPTION USING MESSAGE = 'failed: {text}', ERRCODE = 'P0001'; END$$"),
        ]:
            try:
                conn.execute(sql)
                seen.append((label, "no error"))
            except psycopg.Error as exc:
                seen.append((label, (exc.sqlstate, exc.diag.message_primary)))
        conn.execute(f"DO $$BEGIN RAISE NOTICE 'note: {text}'; END$$")
        seen.append(("notices", list(notices)))
        # bytes the encoding may reject (not UTF-8, not EUC_JP): the server's verdict, unchanged
        res = conn.pgconn.exec_(b"SELECT '\xa4\xff\xfe'::text")
        seen.append(
            (
                "odd bytes",
                (
                    res.status,
                    res.error_field(psycopg.pq.DiagnosticField.SQLSTATE),
                    res.get_value(0, 0) if res.ntuples else None,
                ),
            )
        )
        conn.execute("SELECT 1")  # still usable (no FATAL)
        seen.append(("pinning statement", conn.execute(f"SELECT set_config('lp.note', '{text}', false)").fetchone()))
        seen.append(("setting kept", conn.execute("SELECT current_setting('lp.note')").fetchone()))
    finally:
        conn.close()
    return seen


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("via_set", [False, True], ids=["dsn", "set"])
def test_psycopg_same_as_direct(case: str, via_set: bool, both_ways) -> None:
    db_encoding, client_encoding, text = CASES[case]
    direct_dsn, proxy = both_ways(db_encoding)
    direct = psycopg_session(direct_dsn, client_encoding, text, via_set=via_set)
    proxied = psycopg_session(proxy.dsn, client_encoding, text, via_set=via_set)
    assert proxied == direct
    values = dict(direct)
    assert values["extended param"] == (text, len(text))  # and direct itself round-trips
    assert values["prepared 1"] == (text + "!",)
    stats = proxy.stats()
    assert stats["pinned_sessions"] == 1  # the set_config (or the SET client_encoding) pinned
    assert stats["pin_reasons"] == ({"set": 1} if via_set else {"set_config": 1})


def test_psycopg_non_utf8_text_does_not_pin(both_ways) -> None:
    """Non-ASCII LATIN1 text with nothing session-level in it: transaction pooling as usual."""
    direct_dsn, proxy = both_ways("UTF8")
    with psycopg.connect(with_param(proxy.dsn, client_encoding="latin1"), autocommit=True) as conn:
        for sql in (f"SELECT '{LATIN1_TEXT}'", f"/* {LATIN1_TEXT} */ SELECT 'set_config(' || '{LATIN1_TEXT}'"):
            conn.pgconn.exec_(sql.encode("latin-1"))
            conn.execute(sql)
    stats = proxy.stats()
    assert stats["pinned_sessions"] == 0
    assert stats["transactions"] >= 4


@pytest.mark.parametrize("spelling", ["utf8", "UTF-8", "'utf-8'", "latin1", "iso-8859-15", "euc_jp", "sjis", "win1252"])
def test_parameter_status_as_the_server_sends_it(spelling: str, both_ways) -> None:
    direct_dsn, proxy = both_ways("UTF8")
    seen = []
    for dsn in (direct_dsn, proxy.dsn):
        with psycopg.connect(dsn, client_encoding=spelling) as conn:
            at_login = conn.info.parameter_status("client_encoding")
            conn.execute("SELECT 1")
            seen.append((at_login, conn.info.parameter_status("client_encoding"), conn.info.encoding))
    assert seen[1] == seen[0]


# -- asyncpg ---------------------------------------------------------------------------------
async def asyncpg_session(dsn: str, client_encoding: str, text: str) -> list[tuple[str, object]]:
    """As psycopg_session, for asyncpg. asyncpg encodes SQL *text* in UTF-8 whatever the
    client_encoding (only parameters and results go through its codec), so non-ASCII SQL text
    fails or turns to mojibake on the server, direct as through the proxy: each step's outcome,
    error or value, is what is compared."""
    import asyncpg

    seen: list[tuple[str, object]] = []
    notices: list[str] = []

    async def step(label: str, awaitable: object) -> None:
        try:
            value = await awaitable  # type: ignore[misc]
            seen.append((label, tuple(value) if isinstance(value, asyncpg.Record) else value))
        except asyncpg.PostgresError as exc:
            seen.append((label, (type(exc).__name__, exc.sqlstate, str(exc))))

    conn = await asyncpg.connect(dsn, server_settings={"client_encoding": client_encoding})
    try:
        conn.add_log_listener(lambda _c, msg: notices.append(msg.message))
        seen.append(("client_encoding", conn.get_settings().client_encoding))
        for i in range(2):  # asyncpg prepares every statement under a name
            await step(f"param {i}", conn.fetchrow("SELECT $1::text || '!', length($1::text)", text))
        await step("param back", conn.fetchval("SELECT $1::text = $2::text", text, text))
        await step("literal", conn.fetchrow(f"SELECT '{text}'::text AS v, length('{text}') AS n"))
        await step("simple", conn.execute(f"SELECT '{text}'"))  # no arguments: simple protocol
        await step("identifiers", conn.fetch(f'SELECT 1 AS "col {text}"'))
        await step("missing relation", conn.execute(f'SELECT * FROM "nope {text}"'))
        await step(
            "raise", conn.execute("DO $$BEGIN RAISE EXCEPTION USING MESSAGE = 'failed', ERRCODE = 'P0001'; END$$")
        )
        await step("raise param", conn.fetchval("SELECT (SELECT 1 WHERE $1::text = '' OR 1/0 = 1)", text))
        await step("notice", conn.execute("DO $$BEGIN RAISE NOTICE 'note'; END$$"))
        await asyncio.sleep(0.05)  # log listeners are called soon, not at once
        seen.append(("notices", list(notices)))
        await step("pinning statement", conn.fetchval("SELECT set_config('lp.note', $1, false)", text))
        await step("setting kept", conn.fetchval("SELECT current_setting('lp.note')"))
    finally:
        await conn.close()
    return seen


@pytest.mark.parametrize("case", [c for c in CASES if not c.endswith("utf8")])
def test_asyncpg_same_as_direct(case: str, both_ways) -> None:
    pytest.importorskip("asyncpg")
    db_encoding, client_encoding, text = CASES[case]
    direct_dsn, proxy = both_ways(db_encoding)
    direct = asyncio.run(asyncpg_session(direct_dsn, client_encoding, text))
    proxied = asyncio.run(asyncpg_session(proxy.dsn, client_encoding, text))
    assert proxied == direct
    values = dict(direct)
    assert values["param 1"] == (text + "!", len(text))
    assert values["setting kept"] == text
    assert proxy.stats()["pin_reasons"] == {"set_config": 1}


def test_same_bytes_in_two_encodings_are_two_statements(both_ways) -> None:
    """One backend, two clients preparing the same Parse bytes, one in UTF8 and one in LATIN1:
    each gets its own text (the proxy's shared statement names must not mix them up)."""
    direct_dsn, proxy = both_ways("UTF8", max_backends=1)
    sql_utf8 = "SELECT 'é'::text"  # b"SELECT '\xc3\xa9'::text" in UTF-8 ...
    sql_latin1 = sql_utf8.encode().decode("latin-1")  # ... the very same bytes read as LATIN1

    def run(dsn: str) -> list[str]:
        out = []
        with psycopg.connect(dsn, autocommit=True) as utf8, \
                psycopg.connect(with_param(dsn, client_encoding="latin1"), autocommit=True) as latin1:  # fmt: skip
            for _ in range(2):
                out.append(utf8.execute(sql_utf8, prepare=True).fetchone()[0])
                out.append(latin1.execute(sql_latin1, prepare=True).fetchone()[0])
        return out

    direct = run(direct_dsn)
    assert direct == ["é", "Ã©"] * 2
    assert run(proxy.dsn) == direct
