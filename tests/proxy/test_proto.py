"""The sans-IO parser: byte-at-a-time feeding, every message a pooler needs, and garbage.

No sockets here: messages are built with lambdapool.tools.proto.messages and fed to a Parser.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambdapool.tools.proto import (
    NEED_DATA,
    CancelRequest,
    GSSENCRequest,
    Message,
    Parser,
    ProtocolError,
    SSLAnswer,
    SSLRequest,
    StartupMessage,
)
from lambdapool.tools.proto import messages as m


def feed_bytewise(parser: Parser, data: bytes) -> list:
    events = []
    for i in range(len(data)):
        parser.receive_data(data[i : i + 1])
        events += parser.events()
    return events


CLIENT_SESSION = (
    m.ssl_request()
    + m.startup_message({"user": "app", "database": "db", "application_name": "t"})
    + m.query("select 1")
    + m.parse("s1", "select $1::int", (23,))
    + m.frame("B", b"\0s1\0" + struct.pack("!hhih", 0, 1, 1, 0x31) + b"\0\0")
    + m.describe("P", "")
    + m.frame("E", b"\0" + struct.pack("!i", 0))
    + m.sync()
    + m.close("S", "s1")
    + m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")
    + m.terminate()
)


def test_frontend_session_fed_one_byte_at_a_time_gives_the_same_events_as_at_once():
    whole = Parser(frontend=True)
    whole.receive_data(CLIENT_SESSION)
    at_once = whole.events()
    bytewise = feed_bytewise(Parser(frontend=True), CLIENT_SESSION)
    assert at_once == bytewise
    assert isinstance(bytewise[0], SSLRequest)
    assert bytewise[1] == StartupMessage(196608, {"user": "app", "database": "db", "application_name": "t"})
    assert [e.type for e in bytewise[2:]] == list("QPBDESCpX")
    assert m.read_query(bytewise[2].body) == "select 1"
    name, rest, sql = m.read_parse(bytewise[3].body)
    assert (name, sql) == (b"s1", "select $1::int")
    assert m.parse_raw(b"lp_x", rest) == m.parse("lp_x", "select $1::int", (23,))
    portal, stmt, _ = m.read_bind(bytewise[4].body)
    assert (portal, stmt) == (b"", b"s1")
    assert m.read_target(bytewise[8].body) == ("S", b"s1")
    assert m.read_sasl_initial(bytewise[9].body) == ("SCRAM-SHA-256", b"n,,n=,r=abc")
    # Raw frames are passed through untouched.
    assert (
        b"".join(e.data for e in bytewise[2:])
        == CLIENT_SESSION[8 + len(m.startup_message({"user": "app", "database": "db", "application_name": "t"})) :]
    )


def test_cancel_and_gssenc_requests_keep_the_startup_phase():
    data = m.gssenc_request() + m.cancel_request(42, -7)
    parser = Parser(frontend=True)
    assert feed_bytewise(parser, data) == [GSSENCRequest(), CancelRequest(42, -7)]
    assert parser.in_startup


SERVER_SESSION = (
    m.auth_request(m.AUTH_SASL_CONTINUE, b"r=abc,s=xyz,i=4096")
    + m.auth_ok()
    + m.parameter_status("server_version", "15.4")
    + m.backend_key_data(1234, 5678)
    + m.ready_for_query("I")
    + m.row_description(["a", "b"])
    + m.data_row(["1", None])
    + m.command_complete("SELECT 1")
    + m.error_response("53300", "too many", detail="d", hint="h")
    + m.ready_for_query("E")
)


def test_backend_session_fed_one_byte_at_a_time():
    parser = Parser(frontend=False)
    parser.expect_ssl_answer()
    events = feed_bytewise(parser, b"N" + SERVER_SESSION)
    assert events[0] == SSLAnswer(False)
    assert [e.type for e in events[1:]] == list("RRSKZTDCEZ")
    assert m.read_auth(events[1].body) == (m.AUTH_SASL_CONTINUE, b"r=abc,s=xyz,i=4096")
    assert m.read_parameter_status(events[3].body) == ("server_version", "15.4")
    assert m.read_backend_key(events[4].body) == (1234, 5678)
    assert m.read_ready(events[5].body) == "I"
    assert m.read_data_row(events[7].body) == ["1", None]
    err = m.read_error(events[9].body)
    assert (err["C"], err["M"], err["D"], err["H"]) == ("53300", "too many", "d", "h")
    assert m.read_ready(events[10].body) == "E"


@pytest.mark.parametrize(
    "data, frontend",
    [
        (struct.pack("!i", 3), True),  # startup length below the minimum
        (struct.pack("!i", 2**31 - 1), True),  # absurd startup length
        (struct.pack("!ii", 12, 80877103), True),  # SSLRequest with the wrong length
        (struct.pack("!ii", 8, 2 << 16), True),  # protocol 2
        (m.startup_message({"user": "a"}) + b"Q" + struct.pack("!i", 2**31 - 1), True),  # absurd message length
        (m.startup_message({"user": "a"}) + b"Q" + struct.pack("!i", 2), True),  # below 4
        (m.startup_message({"user": "a"}) + b"!" + struct.pack("!i", 4), True),  # unknown type
        (struct.pack("!ii", 9, 3 << 16) + b"x", True),  # params not NUL-terminated
        (m.startup_message({"database": "a"}), True),  # no user
        (b"Z" + struct.pack("!i", -5), False),
    ],
)
def test_bad_frames_raise_at_once_without_waiting_for_the_body(data, frontend):
    parser = Parser(frontend=frontend)
    parser.receive_data(data)
    with pytest.raises(ProtocolError):
        parser.events()
    with pytest.raises(ProtocolError):  # and it stays broken
        parser.next_event()


def test_absurd_length_is_not_buffered_forever():
    parser = Parser(frontend=False, max_message=1024)
    parser.receive_data(b"D" + struct.pack("!i", 1025))
    with pytest.raises(ProtocolError, match="1025"):
        parser.next_event()


def test_truncated_message_waits_for_more():
    parser = Parser(frontend=False)
    frame = m.command_complete("SELECT 1")
    parser.receive_data(frame[:-1])
    assert parser.next_event() is NEED_DATA
    assert parser.buffered == len(frame) - 1
    parser.receive_data(frame[-1:])
    assert parser.next_event() == Message("C", frame)


@pytest.mark.parametrize(
    "reader, body",
    [
        (m.read_query, b"no nul"),
        (m.read_parse, b"s1\0select 1\0"),  # no parameter count
        (m.read_parse, b"s1\0select 1\0\0\x02\0\0"),  # 2 types declared, 2 bytes given
        (m.read_bind, b"portal"),
        (m.read_target, b"X\0"),
        (m.read_target, b"Sname"),
        (m.read_ready, b"Q"),
        (m.read_auth, b"\0\0"),
        (m.read_sasl_initial, b"SCRAM-SHA-256\0\0\0\0\x09abc"),
        (m.read_password, b"pw\0extra"),
        (m.read_backend_key, b"\0\0\0\1"),
        (m.read_data_row, b"\0\1\0\0\0\x09ab"),
        (m.read_query, b"\xff\xfe\0"),
    ],
)
def test_malformed_bodies_raise_protocol_error(reader, body):
    with pytest.raises(ProtocolError):
        reader(body)


frontend_messages = st.one_of(
    st.text(max_size=40).map(lambda s: m.query(s.replace("\0", ""))),
    st.tuples(st.text(max_size=8), st.text(max_size=40)).map(
        lambda t: m.parse(t[0].replace("\0", ""), t[1].replace("\0", ""))
    ),
    st.just(m.sync()),
    st.just(m.flush()),
    st.text(max_size=8).map(lambda s: m.describe("S", s.replace("\0", ""))),
    st.binary(max_size=64).map(lambda b: m.frame("d", b)),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=st.lists(frontend_messages, max_size=12), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_any_split_of_valid_messages_yields_them_unchanged(msgs, cuts):
    data = m.startup_message({"user": "u"}) + b"".join(msgs)
    parser = Parser(frontend=True)
    events = []
    start = 0
    for cut in [*sorted({c for c in cuts if c < len(data)}), len(data)]:
        parser.receive_data(data[start:cut])
        events += parser.events()
        start = cut
    assert isinstance(events[0], StartupMessage)
    assert [e.data for e in events[1:]] == msgs
    assert parser.buffered == 0


@settings(max_examples=300)
@given(garbage=st.binary(max_size=300), frontend=st.booleans(), started=st.booleans())
def test_random_bytes_give_events_need_data_or_protocol_error_only(garbage, frontend, started):
    parser = Parser(frontend=frontend, max_message=4096)
    prefix = m.startup_message({"user": "u"}) if (frontend and started) else b""
    parser.receive_data(prefix + garbage)
    try:
        events = parser.events()
    except ProtocolError:
        return
    # Nothing parsed may exceed what was given, and what remains is a partial message.
    assert parser.buffered <= len(garbage)
    for event in events:
        if isinstance(event, Message):
            assert len(event.data) <= len(garbage) and len(event.data) >= 5
            # Body readers never raise anything but ProtocolError.
            for reader in (m.read_query, m.read_parse, m.read_bind, m.read_target, m.read_error,
                           m.read_ready, m.read_auth, m.read_password, m.read_sasl_initial,
                           m.read_parameter_status, m.read_data_row):  # fmt: skip
                try:
                    reader(event.body)
                except ProtocolError:
                    pass


def test_large_message_in_small_pieces_is_assembled_once_complete():
    payload = bytes(range(256)) * 8192  # 2 MiB of CopyData
    frame = m.frame("d", payload) + m.frame("c")
    parser = Parser(frontend=False)
    events = []
    for i in range(0, len(frame), 1000):
        parser.receive_data(frame[i : i + 1000])
        events += parser.events()
        if len(events) == 0:
            assert parser.buffered == min(i + 1000, len(frame))
    assert [e.type for e in events] == ["d", "c"] and events[0].body == payload
    assert parser.buffered == 0 and parser.take_rest() == b""


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=st.lists(frontend_messages, max_size=12), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_frames_are_the_messages_as_plain_tuples_at_any_split(msgs, cuts):
    data = b"".join(msgs)
    by_frames, by_messages = Parser(frontend=True, startup=False), Parser(frontend=True, startup=False)
    frames, messages = [], []
    start = 0
    for cut in [*sorted({c for c in cuts if c < len(data)}), len(data)]:
        by_frames.receive_data(data[start:cut])
        by_messages.receive_data(data[start:cut])
        frames += by_frames.frames()
        messages += by_messages.messages()
        start = cut
    assert all(type(f) is tuple for f in frames) and all(isinstance(x, Message) for x in messages)
    assert frames == [tuple(x) for x in messages] and [f[1] for f in frames] == msgs


def _nul_free(text: str) -> str:
    return text.replace("\0", "")


@settings(max_examples=150)
@given(
    msg=st.one_of(
        frontend_messages,
        st.tuples(st.text(max_size=8), st.text(max_size=8)).map(
            lambda t: m.bind(_nul_free(t[0]), _nul_free(t[1]), (b"1",))
        ),
    )
)
def test_readers_at_an_offset_read_the_frame_in_place_as_they_read_its_body(msg):
    body, kind = msg[5:], msg[:1]
    if kind == b"P":
        assert m.read_parse_bytes(msg, 5) == m.read_parse_bytes(body)
    elif kind == b"D":
        assert m.read_target(msg, 5) == m.read_target(body)
    elif kind == b"B":
        portal, stmt, rest = m.read_bind(msg, 5)
        assert (portal, stmt, rest - 5) == m.read_bind(body)
    elif kind == b"Q":
        assert m.read_query_bytes(msg, 5) == m.read_query_bytes(body)
