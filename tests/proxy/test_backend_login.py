"""The proxy's login to a server (``lambdapool.tools.proxy.backend_login``) without sockets: a scripted server.

The server's bytes are built with ``lambdapool.tools.proto``'s builders (SCRAM's server side is the
proxy's own ``ScramVerifier``), fed byte by byte; each test asserts the actions the login
asks its driver to carry out.
"""

from __future__ import annotations

import hashlib

import pytest

from lambdapool.tools.proto import Parser, ProtocolError
from lambdapool.tools.proto import messages as m
from lambdapool.tools.proxy.auth import AuthFailed, ScramVerifier
from lambdapool.tools.proxy.backend_login import (
    BackendLogin,
    Failed,
    LoginAction,
    LoginPhase,
    Ready,
    Send,
    StartTls,
)
from lambdapool.tools.proxy.config import BackendTarget

STARTUP = m.startup_message({"user": "app", "database": "db"})
AFTER_AUTH = (
    m.parameter_status("server_version", "16.2")
    + m.parameter_status("in_hot_standby", "off")
    + m.backend_key_data(31, 4159)
    + m.ready_for_query("I")
)


def login_to(dsn: str = "postgresql://app:pw@h/db") -> BackendLogin:
    return BackendLogin(BackendTarget.from_dsn(dsn), Parser(frontend=False))


def feed(login: BackendLogin, data: bytes) -> list[LoginAction]:
    """``data`` one byte at a time: nothing may happen before the last byte of a message."""
    for i in range(len(data) - 1):
        assert login.receive_data(data[i : i + 1]) == []
    return login.receive_data(data[-1:])


def client_message(action: LoginAction) -> tuple[str, bytes]:
    assert isinstance(action, Send)
    return action.data[:1].decode(), action.data[5:]


def assert_ready(login: BackendLogin) -> None:
    assert feed(login, AFTER_AUTH) == [Ready()]
    assert login.phase is LoginPhase.READY
    assert login.params == {"server_version": "16.2", "in_hot_standby": "off"}
    assert (login.pid, login.secret, login.status) == (31, 4159, "I")


def test_trust_logs_in_and_collects_parameters_and_the_key() -> None:
    login = login_to("postgresql://app@h/db")
    assert login.start() == [Send(STARTUP)]
    assert feed(login, m.auth_ok()) == []
    assert_ready(login)


def test_what_follows_ready_for_query_is_left_for_the_relay() -> None:
    login = login_to()
    login.start()
    assert login.receive_data(m.auth_ok() + AFTER_AUTH + m.command_complete("SELECT 1")) == [Ready()]
    assert [kind for kind, _ in login.parser.frames()] == ["C"]


def test_cleartext_password() -> None:
    login = login_to()
    login.start()
    assert feed(login, m.auth_request(m.AUTH_CLEARTEXT)) == [Send(m.password(b"pw"))]
    feed(login, m.auth_ok())
    assert_ready(login)


def test_md5_password() -> None:
    login = login_to()
    login.start()
    salt = b"\x01\x02\x03\x04"
    inner = hashlib.md5(b"pwapp").hexdigest()
    answer = b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()
    assert feed(login, m.auth_request(m.AUTH_MD5, salt)) == [Send(m.password(answer))]


def scram_exchange(server_password: str) -> tuple[BackendLogin, list[LoginAction]]:
    """The login against a server that knows ``server_password`` for app; the actions after server-final."""
    server = ScramVerifier({"app": server_password})
    login = login_to()
    login.start()
    kind, body = client_message(*feed(login, m.auth_sasl(["SCRAM-SHA-256"])))
    mechanism, first = m.read_sasl_initial(body)
    assert (kind, mechanism) == ("p", "SCRAM-SHA-256")
    exchange, server_first = server.start("app", first)
    kind, final = client_message(*feed(login, m.auth_request(m.AUTH_SASL_CONTINUE, server_first)))
    try:
        server_final = server.finish("app", exchange, final)
    except AuthFailed:
        fatal = m.error_response("28P01", 'password authentication failed for user "app"', severity="FATAL")
        return login, feed(login, fatal)
    return login, feed(login, m.auth_request(m.AUTH_SASL_FINAL, server_final) + m.auth_ok())


def test_scram_logs_in() -> None:
    login, actions = scram_exchange("pw")
    assert actions == []
    assert_ready(login)


def test_scram_with_a_wrong_password_fails_with_the_servers_words() -> None:
    login, actions = scram_exchange("another")
    assert actions == [Failed('28P01 password authentication failed for user "app"')]
    assert login.phase is LoginPhase.FAILED


def test_a_server_asking_for_a_password_the_dsn_lacks_fails() -> None:
    login = login_to("postgresql://app@h/db")
    login.start()
    assert feed(login, m.auth_request(m.AUTH_MD5, b"salt")) == [
        Failed("the server asks for a password; put it in the backend DSN")
    ]


def test_sasl_without_scram_sha_256_fails() -> None:
    login = login_to()
    login.start()
    (failed,) = feed(login, m.auth_sasl(["SCRAM-SHA-256-PLUS"]))
    assert isinstance(failed, Failed) and "no SASL mechanism we speak" in failed.reason


def test_sslmode_require_asks_for_tls_then_starts_up_inside_it() -> None:
    login = login_to("postgresql://app:pw@h/db?sslmode=require")
    assert login.start() == [Send(m.ssl_request())]
    assert feed(login, b"S") == [StartTls()]
    assert login.phase is LoginPhase.TLS
    assert login.tls_started() == [Send(STARTUP)]
    feed(login, m.auth_ok())
    assert_ready(login)


def test_a_server_refusing_tls_fails_the_login() -> None:
    login = login_to("postgresql://app:pw@h/db?sslmode=require")
    login.start()
    assert feed(login, b"N") == [Failed("the server refused TLS and the backend DSN says sslmode=require")]


def test_an_error_from_the_server_fails_the_login() -> None:
    login = login_to()
    login.start()
    error = m.error_response("57P03", "the database system is starting up", severity="FATAL")
    assert feed(login, error) == [Failed("57P03 the database system is starting up")]


def test_ready_for_query_before_authentication_is_a_protocol_error() -> None:
    login = login_to()
    login.start()
    with pytest.raises(ProtocolError, match="unexpected message 'Z'"):
        feed(login, m.ready_for_query("I"))


def test_a_data_row_during_login_is_a_protocol_error() -> None:
    login = login_to()
    login.start()
    feed(login, m.auth_ok())
    with pytest.raises(ProtocolError, match="unexpected message 'D'"):
        feed(login, m.data_row([1]))


def test_tls_started_without_asking_is_a_protocol_error() -> None:
    login = login_to()
    login.start()
    with pytest.raises(ProtocolError, match="TLS started"):
        login.tls_started()
