"""The relay's state machine (``lambdapool.tools.proxy.session``) without Postgres or sockets.

Both peers are scripted with ``lambdapool.tools.proto``'s builders: the client's bytes go in through
``receive_client``, the server's messages through ``receive_backend``, and each test asserts
the exact actions (and bytes) the session asks its driver to carry out.
"""

from __future__ import annotations

import pytest

from lambdapool.tools.proto import Message, Parser, ProtocolError
from lambdapool.tools.proto import messages as m
from lambdapool.tools.proxy.backend_state import SYNCED, BackendState, Expect
from lambdapool.tools.proxy.session import (
    BORROW,
    CANCEL_BORROW,
    CLOSE,
    PAUSE_READING,
    RELEASE,
    RESET,
    RESET_DISCARD,
    RESUME_READING,
    TO_BACKEND,
    TO_CLIENT,
    Session,
    SessionState,
)
from lambdapool.tools.proxy.shared import SharedState

BASELINE = {"client_encoding": "UTF8", "server_encoding": "UTF8", "DateStyle": "ISO, MDY"}
READY_I, READY_T, READY_E = m.ready_for_query("I"), m.ready_for_query("T"), m.ready_for_query("E")
BORROWED = [(BORROW, b"")]


def new_session(
    shared: SharedState | None = None, settings: dict[str, str] | None = None, reported: dict[str, str] | None = None
) -> Session:
    session = Session(shared or SharedState(BASELINE))
    session.logged_in(settings or {}, reported or dict(BASELINE))
    return session


def server(*frames: bytes) -> list[Message]:
    """The server's frames as the backend driver hands them over (parsed)."""
    parser = Parser(frontend=False)
    parser.receive_data(b"".join(frames))
    return parser.events()


def select_answer(value: str = "1", status: str = "I") -> bytes:
    return m.row_description(["x"]) + m.data_row([value]) + m.command_complete("SELECT 1") + m.ready_for_query(status)


def attach(session: Session, backend: BackendState | None = None) -> tuple[BackendState, list[tuple[str, bytes]]]:
    backend = backend or BackendState(dict(BASELINE))
    return backend, session.attached(backend)


def error_fields(frame: bytes) -> dict[str, str]:
    assert frame[:1] == b"E"
    return m.read_error(frame[5:])


# -- transactions ----------------------------------------------------------------------------
def test_a_simple_query_borrows_relays_and_releases_at_ready_for_query_idle() -> None:
    session = new_session()
    query = m.query("SELECT 1")
    for byte in query[:-1]:  # byte by byte: nothing happens before the message is whole
        assert session.receive_client(bytes([byte])) == []
    assert session.receive_client(query[-1:]) == BORROWED
    backend, actions = attach(session)
    assert actions == [(TO_BACKEND, query)]
    session.backend_wrote()
    assert list(backend.expect) == [("Q", None)]
    answer = select_answer()
    assert session.receive_backend(server(answer)) == [(TO_CLIENT, answer), (RELEASE, b"")]
    assert session.backend is None and not backend.expect and backend.synced
    assert session.shared.counters["borrows"] == 1 and session.shared.counters["transactions"] == 1


def test_an_answer_in_pieces_is_relayed_as_it_comes_and_released_at_the_end() -> None:
    session = new_session()
    session.receive_client(m.query("SELECT 1"))
    attach(session)
    assert session.receive_backend(server(m.row_description(["x"]))) == [(TO_CLIENT, m.row_description(["x"]))]
    done = m.command_complete("SELECT 0")
    assert session.receive_backend(server(done)) == [(TO_CLIENT, done)]
    assert session.receive_backend(server(READY_I)) == [(TO_CLIENT, READY_I), (RELEASE, b"")]


def test_a_transaction_keeps_its_backend_until_ready_for_query_idle() -> None:
    session = new_session()
    session.receive_client(m.query("BEGIN"))
    backend, _ = attach(session)
    assert session.receive_backend(server(m.command_complete("BEGIN"), READY_T)) == [
        (TO_CLIENT, m.command_complete("BEGIN") + READY_T)
    ]
    assert session.backend is backend and backend.status == "T"
    # still attached: the next statement goes straight to the same backend, no borrow
    assert session.receive_client(m.query("SELECT 1")) == [(TO_BACKEND, m.query("SELECT 1"))]
    assert session.receive_backend(server(select_answer(status="T"))) == [(TO_CLIENT, select_answer(status="T"))]
    assert session.receive_client(m.query("COMMIT")) == [(TO_BACKEND, m.query("COMMIT"))]
    assert session.receive_backend(server(m.command_complete("COMMIT"), READY_I)) == [
        (TO_CLIENT, m.command_complete("COMMIT") + READY_I),
        (RELEASE, b""),
    ]
    assert session.shared.counters["transactions"] == 1


def test_an_idle_client_holds_nothing_for_sync_flush_or_close() -> None:
    session = new_session()
    assert session.receive_client(m.sync()) == [(TO_CLIENT, READY_I)]
    assert session.receive_client(m.flush()) == []
    assert session.receive_client(m.close("S", "nope")) == [(TO_CLIENT, m.close_complete())]
    assert session.shared.counters["borrows"] == 0 and not session.waiting


def test_startup_settings_are_set_on_the_backend_first_and_their_answer_is_hidden() -> None:
    session = new_session(settings={"application_name": "app one"})
    session.receive_client(m.query("SELECT 1"))
    backend, actions = attach(session)
    assert actions == [(TO_BACKEND, m.query("SET application_name = 'app one'")), (TO_BACKEND, m.query("SELECT 1"))]
    assert backend.applied == {"application_name": "app one"}
    hidden = m.command_complete("SET") + m.parameter_status("application_name", "app one") + READY_I
    assert session.receive_backend(server(hidden)) == []
    assert session.receive_backend(server(select_answer())) == [(TO_CLIENT, select_answer()), (RELEASE, b"")]
    # the next borrow of the same backend needs no SET
    session.receive_client(m.query("SELECT 2"))
    assert session.attached(backend) == [(TO_BACKEND, m.query("SELECT 2"))]


# -- pinning ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SET search_path = app", "set"),
        ("CREATE TEMP TABLE scratch (id int)", "temporary_table"),
        ("LISTEN jobs", "listen"),
        ("SELECT pg_advisory_lock(42)", "advisory_lock"),
        ("SELECT '" + "x" * (16 * 1024) + "'", "statement_over_16kb"),
    ],
)
def test_session_state_pins_the_backend_and_resets_it_with_discard(sql: str, reason: str) -> None:
    session = new_session()
    session.receive_client(m.query(sql))
    backend, _ = attach(session)
    answer = m.command_complete("OK") + READY_I
    assert session.receive_backend(server(answer)) == [(TO_CLIENT, answer)]
    assert session.pinned == reason and session.backend is backend
    assert session.shared.pin_counts == {reason: 1} and session.shared.counters["pinned_sessions"] == 1
    # pinned: later statements go straight to the same backend, idle or not
    assert session.receive_client(m.query("SELECT 1")) == [(TO_BACKEND, m.query("SELECT 1"))]
    assert session.receive_backend(server(select_answer())) == [(TO_CLIENT, select_answer())]
    assert session.receive_client(m.terminate()) == [(CLOSE, b"")]
    assert session.client_gone() == [(RESET_DISCARD, b"")]


def test_set_local_and_set_inside_a_literal_do_not_pin() -> None:
    session = new_session()
    session.receive_client(m.query("BEGIN; SET LOCAL work_mem = '1MB'; SELECT 'SET x; LISTEN y'"))
    attach(session)
    assert session.receive_backend(server(m.command_complete("SELECT 1"), READY_I))[-1] == (RELEASE, b"")
    assert session.pinned is None


@pytest.mark.parametrize(
    ("encoding", "text"),
    [("LATIN1", "é" * 9000), ("EUC_JP", "日本" * 3000)],  # 18 KB in UTF-8, 9 KB / 12 KB as sent
)
def test_non_utf8_sql_is_relayed_as_bytes_and_measured_as_sent(encoding: str, text: str) -> None:
    session = new_session(reported={**BASELINE, "client_encoding": encoding})
    raw = f"SELECT '{text}'".encode(session.codec)
    assert len(raw) < 16 * 1024 < len(raw.decode(session.codec).encode())
    query = m.frame("Q", raw + b"\0")
    session.receive_client(query)
    _, actions = attach(session, BackendState({**BASELINE, "client_encoding": encoding}))
    assert actions == [(TO_BACKEND, query)]  # the very bytes, not re-encoded
    assert session.receive_backend(server(m.command_complete("SELECT 1"), READY_I))[-1] == (RELEASE, b"")
    assert session.pinned is None


def test_bytes_that_are_not_text_in_the_session_encoding_neither_pin_nor_fail() -> None:
    session = new_session(reported={**BASELINE, "client_encoding": "EUC_JP"})
    query = m.frame("Q", b"SELECT '\xff\xfe\x8e'\0")  # no EUC_JP character: the server will say so
    session.receive_client(query)
    _, actions = attach(session)
    assert actions == [(TO_BACKEND, query)]
    assert session.pinned is None


# -- replay ----------------------------------------------------------------------------------
def test_a_request_the_dead_backend_never_saw_is_sent_to_a_new_one() -> None:
    session = new_session()
    query = m.query("INSERT INTO t VALUES (1)")
    session.receive_client(query)
    attach(session)  # ...and the bytes are still held back (injected latency): no backend_wrote()
    assert session.backend_lost(by_proxy=True) == BORROWED
    assert session.shared.counters["replayed"] == 1
    _, actions = attach(session)
    assert actions == [(TO_BACKEND, query)]
    session.backend_wrote()
    assert session.receive_backend(server(m.command_complete("INSERT 0 1"), READY_I))[-1] == (RELEASE, b"")


def test_a_request_that_reached_the_backend_is_never_sent_twice() -> None:
    session = new_session()
    session.receive_client(m.query("INSERT INTO t VALUES (1)"))
    attach(session)
    session.backend_wrote()
    [(kind, frame)] = session.backend_lost(by_proxy=False)
    assert kind == CLOSE
    fields = error_fields(frame)
    assert (fields["S"], fields["C"]) == ("FATAL", "08006")
    assert "lost the database connection in the middle of a transaction (the server closed it)" in fields["M"]
    assert session.shared.counters["replayed"] == 0


def test_a_backend_lost_mid_reply_ends_the_session_with_an_error() -> None:
    session = new_session()
    session.receive_client(m.query("SELECT 1"))
    attach(session)  # not written yet, but the server's answer shows it ran
    assert session.receive_backend(server(m.row_description(["x"]))) == [(TO_CLIENT, m.row_description(["x"]))]
    [(kind, frame)] = session.backend_lost(by_proxy=True)
    assert kind == CLOSE and error_fields(frame)["C"] == "08006"
    assert "(the proxy closed it (fault injection or lifetime))" in error_fields(frame)["M"]
    assert session.client_gone() == []  # the backend is gone: nothing to reset


def test_after_the_servers_own_fatal_the_client_is_just_closed() -> None:
    session = new_session()
    session.receive_client(m.query("SELECT pg_sleep(10)"))
    attach(session)
    fatal = m.error_response("57P01", "terminating connection due to administrator command", severity="FATAL")
    assert session.receive_backend(server(fatal)) == [(TO_CLIENT, fatal)]
    assert session.backend_lost(by_proxy=False) == [(CLOSE, b"")]


# -- prepared statements ---------------------------------------------------------------------
def test_named_statements_follow_the_client_to_another_backend() -> None:
    shared = SharedState(BASELINE)
    session = new_session(shared)
    parse = m.parse("s1", "SELECT $1::int")
    proxy_name = shared.statement_name(parse[5 + len(b"s1\0") :])
    assert session.receive_client(parse + m.sync()) == BORROWED
    a, actions = attach(session)
    proxied_parse = m.parse_raw(proxy_name, parse[8:])
    assert actions == [(TO_BACKEND, proxied_parse + m.sync())]
    assert session.receive_backend(server(m.parse_complete(), READY_I)) == [
        (TO_CLIENT, m.parse_complete() + READY_I),
        (RELEASE, b""),
    ]
    assert a.prepared == {proxy_name}

    # the next transaction runs on backend B, which has never seen the statement: re-Parse it
    session.receive_client(m.bind("", "s1", (b"7",)) + m.execute() + m.sync())
    b, actions = attach(session)
    assert actions == [(TO_BACKEND, proxied_parse + m.bind("", proxy_name.decode(), (b"7",)) + m.execute() + m.sync())]
    assert shared.counters["reprepared"] == 1
    answer = [m.bind_complete(), m.data_row(["7"]), m.command_complete("SELECT 1"), READY_I]
    # the ParseComplete of the proxy's own Parse is swallowed
    assert session.receive_backend(server(m.parse_complete(), *answer)) == [
        (TO_CLIENT, b"".join(answer)),
        (RELEASE, b""),
    ]
    assert b.prepared == {proxy_name}

    # back on A, which has it: no Parse
    session.receive_client(m.bind("", "s1", (b"8",)) + m.execute() + m.sync())
    _, actions = attach(session, a)
    assert actions == [(TO_BACKEND, m.bind("", proxy_name.decode(), (b"8",)) + m.execute() + m.sync())]
    assert shared.counters["reprepared"] == 1


def test_a_parse_of_a_statement_the_backend_has_is_answered_by_the_proxy() -> None:
    shared = SharedState(BASELINE)
    session = new_session(shared)
    parse = m.parse("mine", "SELECT 1")
    backend = BackendState(dict(BASELINE))
    backend.prepared.add(shared.statement_name(parse[5 + len(b"mine\0") :]))
    session.receive_client(parse + m.sync())
    _, actions = attach(session, backend)
    assert actions == [(TO_CLIENT, m.parse_complete()), (TO_BACKEND, m.sync())]


def test_close_removes_the_mapping() -> None:
    session = new_session()
    session.receive_client(m.parse("s1", "SELECT 1") + m.sync())
    backend, _ = attach(session)
    session.receive_backend(server(m.parse_complete(), READY_I))
    assert set(session.statements) == {b"s1"}
    assert session.receive_client(m.close("S", "s1") + m.sync()) == [
        (TO_CLIENT, m.close_complete()),
        (TO_CLIENT, READY_I),
    ]
    assert session.statements == {}
    # a Bind of the closed name goes to the server as the client wrote it (which reports it unknown)
    session.receive_client(m.bind("", "s1") + m.execute() + m.sync())
    _, actions = attach(session, backend)
    assert actions == [(TO_BACKEND, m.bind("", "s1") + m.execute() + m.sync())]


def test_the_same_sql_bytes_in_two_encodings_are_two_statements() -> None:
    shared = SharedState(BASELINE)
    utf8 = new_session(shared)
    latin1 = new_session(shared, reported={**BASELINE, "client_encoding": "LATIN1"})
    parse = m.frame("P", b"s\0SELECT '\xc3\xa9'\0\0\0")  # 'é' in UTF-8; 'Ã©' in LATIN1
    names = []
    for session in (utf8, latin1):
        session.receive_client(parse + m.sync())
        backend, actions = attach(session)
        names.append(backend.expect[0][1])
        assert actions == [(TO_BACKEND, m.parse_raw(names[-1], parse[7:]) + m.sync())]
    assert names[0] != names[1] and all(name.startswith(b"lp_") for name in names)


def test_an_encoding_change_reported_by_the_server_changes_the_statement_key() -> None:
    session = new_session()
    session.receive_client(m.query("SET client_encoding = 'LATIN1'"))
    attach(session)
    assert session.encoding_key == b""
    session.receive_backend(server(m.command_complete("SET"), m.parameter_status("client_encoding", "LATIN1"), READY_I))
    assert (session.codec, session.encoding_key) == ("iso8859-1", b"LATIN1")


# -- failures --------------------------------------------------------------------------------
def test_a_borrow_timeout_answers_with_rds_proxys_error_and_the_session_goes_on() -> None:
    session = new_session()
    assert session.receive_client(m.query("SELECT 1")) == BORROWED
    actions = session.borrow_timed_out(busy=2, cap=2, waiting=3, timeout=2)
    error = m.error_response(
        "53300",
        "Timed-out waiting to acquire database connection. (lambdapool local proxy: timed out after 2.0s waiting to "
        "borrow a database connection (all 2 backends busy; raise max_backends or borrow_timeout))",
        hint="2 of 2 backends were in use and 3 other clients waiting",
    )
    assert actions == [(TO_CLIENT, error + READY_I)]
    assert not session.waiting and session.pending == []
    assert session.receive_client(m.query("SELECT 1")) == BORROWED  # the connection stays usable


def test_a_failed_borrow_of_an_extended_batch_skips_to_the_clients_sync() -> None:
    session = new_session()
    session.receive_client(m.parse("", "SELECT 1") + m.bind("", ""))
    [(kind, frame)] = session.borrow_failed("the server refused the login")
    assert kind == TO_CLIENT and error_fields(frame)["C"] == "08001"
    assert session.receive_client(m.execute()) == []  # still before the Sync: dropped, as the server would
    assert session.receive_client(m.sync()) == [(TO_CLIENT, READY_I)]


def test_a_client_streaming_while_it_waits_is_paused_and_resumed_when_lent() -> None:
    session = new_session()
    session.receive_client(m.query("SELECT 1"))
    actions = session.receive_client(m.flush() * 10001)
    assert actions == [(PAUSE_READING, b"")]
    _, actions = attach(session)
    assert actions[0] == (RESUME_READING, b"")


def test_garbage_from_the_client_is_a_fatal_protocol_error() -> None:
    session = new_session()
    [(kind, frame)] = session.receive_client(b"\x01\x00\x00\x00\x08garbage")
    assert kind == CLOSE
    fields = error_fields(frame)
    assert (fields["S"], fields["C"]) == ("FATAL", "08P01")
    assert "invalid message from the client: invalid frontend message type" in fields["M"]


def test_a_password_message_after_login_is_a_protocol_error() -> None:
    session = new_session()
    [(kind, frame)] = session.receive_client(m.password(b"secret-value"))
    assert kind == CLOSE and error_fields(frame)["C"] == "08P01"
    assert b"secret-value" not in frame


def test_a_malformed_bind_in_a_lent_backend_closes_the_client_and_resets() -> None:
    session = new_session()
    session.receive_client(m.query("BEGIN"))
    attach(session)
    session.receive_backend(server(m.command_complete("BEGIN"), READY_T))
    [(kind, frame)] = session.receive_client(m.frame("D", b"Xname\0"))
    assert kind == CLOSE and error_fields(frame)["C"] == "08P01"
    assert session.client_gone() == [(RESET, b"")]


def test_a_server_error_in_a_transaction_keeps_the_backend_until_rollback() -> None:
    session = new_session()
    session.receive_client(m.query("BEGIN"))
    attach(session)
    session.receive_backend(server(m.command_complete("BEGIN"), READY_T))
    session.receive_client(m.query("SELECT 1/0"))
    error = m.error_response("22012", "division by zero")
    assert session.receive_backend(server(error, READY_E)) == [(TO_CLIENT, error + READY_E)]
    assert session.backend is not None
    session.receive_client(m.query("ROLLBACK"))
    assert session.receive_backend(server(m.command_complete("ROLLBACK"), READY_I))[-1] == (RELEASE, b"")


def test_an_extended_protocol_error_drops_what_the_server_skips() -> None:
    session = new_session()
    session.receive_client(m.parse("", "SELECT 1/0") + m.bind("", "") + m.execute() + m.sync())
    backend, _ = attach(session)
    assert [kind for kind, _ in backend.expect] == ["P", "B", "E", "S"]
    error = m.error_response("22012", "division by zero")
    answer = m.parse_complete() + m.bind_complete() + error + READY_I
    assert session.receive_backend(server(answer)) == [(TO_CLIENT, answer), (RELEASE, b"")]
    assert not backend.expect


def test_terminate_while_idle_closes_and_holds_nothing() -> None:
    session = new_session()
    assert session.receive_client(m.query("SELECT 1") + m.terminate()) == [(CLOSE, b"")]  # gave up: no borrow
    assert session.client_gone() == []
    assert session.receive_client(m.query("SELECT 1")) == []  # closed


def test_terminate_while_waiting_leaves_the_queue() -> None:
    session = new_session()
    assert session.receive_client(m.query("SELECT 1")) == BORROWED
    assert session.receive_client(m.terminate()) == [(CLOSE, b"")]
    assert session.client_gone() == [(CANCEL_BORROW, b"")]


def test_terminate_in_a_transaction_resets_the_backend() -> None:
    session = new_session()
    session.receive_client(m.query("BEGIN"))
    attach(session)
    session.receive_backend(server(m.command_complete("BEGIN"), READY_T))
    assert session.receive_client(m.query("SELECT 1") + m.terminate()) == [
        (TO_BACKEND, m.query("SELECT 1")),
        (CLOSE, b""),
    ]
    assert session.client_gone() == [(RESET, b"")]
    assert session.client_gone() == []  # once


def test_discard_all_in_a_pinned_session_forgets_what_the_backend_had() -> None:
    # The server drops every prepared statement on DISCARD ALL; the backend's record must
    # follow even when the session was already pinned, or the client's next Parse of the
    # same query is answered by the proxy and its Bind fails on the server.
    shared = SharedState(BASELINE)
    session = new_session(shared)
    session.receive_client(m.query("SET search_path = public"))
    backend, _ = attach(session)
    session.receive_backend(server(m.command_complete("SET"), READY_I))
    assert session.pinned == "set"
    parse = m.parse("s1", "SELECT 1")
    session.receive_client(parse + m.sync())
    session.receive_backend(server(m.parse_complete(), READY_I))
    proxy_name = shared.statement_name(parse[5 + len(b"s1\0") :])
    assert backend.prepared == {proxy_name}
    session.receive_client(m.query("DISCARD ALL"))
    session.receive_backend(server(m.command_complete("DISCARD ALL"), READY_I))
    assert backend.prepared == set()
    assert session.receive_client(parse + m.sync()) == [(TO_BACKEND, m.parse_raw(proxy_name, parse[8:]) + m.sync())]


def test_discard_all_inside_a_literal_keeps_the_backends_statements() -> None:
    shared = SharedState(BASELINE)
    session = new_session(shared)
    parse = m.parse("s1", "SELECT 1")
    session.receive_client(parse + m.sync())
    backend, _ = attach(session)
    session.receive_backend(server(m.parse_complete(), READY_I))
    # pins (SET), but the DISCARD ALL is only text: the server keeps the statement
    session.receive_client(m.query("SET application_name = 'DISCARD ALL'"))
    attach(session, backend)
    assert session.pinned == "set"
    assert backend.prepared == {shared.statement_name(parse[5 + len(b"s1\0") :])}


def test_big_statements_pin_and_are_not_kept_in_the_sql_cache() -> None:
    shared = SharedState(BASELINE)
    session = new_session(shared)
    big = m.query("SELECT '" + "x" * (17 * 1024) + "'")
    session.receive_client(big)
    backend, _ = attach(session)
    assert session.pinned == "statement_over_16kb" and shared.sql_cache == {}
    session.receive_backend(server(select_answer()))
    # pinned now: its next big statements go through without being read
    assert session.receive_client(big) == [(TO_BACKEND, big)]
    assert shared.sql_cache == {} and shared.pin_counts == {"statement_over_16kb": 1}


# -- named states, and events in the wrong one ---------------------------------------------------
def test_the_session_moves_through_its_named_states() -> None:
    session = new_session()
    assert session.state is SessionState.IDLE
    session.receive_client(m.query("SELECT 1"))
    assert session.state is SessionState.WAITING and session.waiting
    attach(session)
    assert session.state is SessionState.ATTACHED
    session.receive_backend(server(select_answer()))
    assert session.state is SessionState.IDLE
    session.client_gone()
    assert session.state is SessionState.CLOSED and session.closed


def test_a_backend_lent_to_a_session_that_did_not_ask_is_a_protocol_error() -> None:
    session = new_session()
    with pytest.raises(ProtocolError, match="a backend was lent while idle"):
        attach(session)


def test_a_backend_speaking_to_a_detached_session_is_a_protocol_error() -> None:
    session = new_session()
    with pytest.raises(ProtocolError, match="a backend spoke while idle"):
        session.receive_backend(server(READY_I))


def test_a_borrow_ending_for_a_session_that_is_not_waiting_is_a_protocol_error() -> None:
    session = new_session()
    session.receive_client(m.query("SELECT 1"))
    attach(session)
    with pytest.raises(ProtocolError, match="a borrow timed out while attached"):
        session.borrow_timed_out(busy=1, cap=1, waiting=0, timeout=1.0)
    with pytest.raises(ProtocolError, match="a borrow failed while attached"):
        session.borrow_failed("refused")
    session.receive_backend(server(select_answer()))
    with pytest.raises(ProtocolError, match="the backend was lost while idle"):
        session.backend_lost(by_proxy=True)


def test_the_proxys_own_queries_are_owed_through_the_backend_state() -> None:
    backend = BackendState(dict(BASELINE))
    backend.owe_hidden_query()  # a reset's ROLLBACK: nothing of its answer reaches anyone
    out: list[bytes] = []
    assert backend.relay(server(m.command_complete("ROLLBACK"), READY_I), out, None) & SYNCED
    assert out == [] and not backend.owes
    backend.owe_query()  # the proxy's own SHOW: its answer is collected
    backend.relay(server(select_answer()), out, None)
    assert b"".join(out) == select_answer()


def test_answers_are_owed_as_typed_kinds() -> None:
    session = new_session()
    session.receive_client(m.parse("", "SELECT 1") + m.bind("", "") + m.execute() + m.sync())
    backend, _ = attach(session)
    assert [kind for kind, _ in backend.expect] == [Expect.PARSE, Expect.BIND, Expect.EXECUTE, Expect.SYNC]
    assert all(isinstance(kind, Expect) for kind, _ in backend.expect)
