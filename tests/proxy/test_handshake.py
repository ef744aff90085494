"""A client's login (``lambdapool.tools.proxy.handshake``) without sockets: a scripted client, byte by byte.

The client's bytes are built with ``lambdapool.tools.proto``'s builders (and ``scramp`` for SCRAM),
the proxy is a small fake :class:`~lambdapool.tools.proxy.handshake.LoginContext`, and each test
asserts the exact actions the handshake asks its driver to carry out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from lambdapool.tools.proto import Parser, ProtocolError
from lambdapool.tools.proto import messages as m
from lambdapool.tools.proxy.auth import ScramVerifier
from lambdapool.tools.proxy.config import BackendTarget, ProxySettings
from lambdapool.tools.proxy.handshake import (
    Borrow,
    Cancel,
    ClientHandshake,
    Close,
    HandshakeAction,
    LoggedIn,
    Phase,
    Send,
    StartTls,
)
from lambdapool.tools.proxy.shared import SharedState
from tests.proxy.test_auth_tls import AKID, SECRET, make_token

BASELINE = {"client_encoding": "UTF8", "server_encoding": "UTF8", "DateStyle": "ISO, MDY"}
PID, KEY = 4242, 777


@dataclass
class FakeProxy:
    """The proxy as a login sees it: settings, counters and the admission checks, no loop."""

    settings: ProxySettings
    shared: SharedState = field(default_factory=lambda: SharedState(BASELINE))
    counters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("auth_failures", "borrows", "client_cap_refusals", "rate_refusals"), 0)
    )
    scram: ScramVerifier | None = None
    iam_hosts: set[str] = field(default_factory=lambda: {"127.0.0.1", "localhost"})
    port: int = 6432
    tls_offered: bool = False
    clients: int = 1
    rate_tokens: int = 100
    iam_throttled: int = 0
    admin_queries: list[str] = field(default_factory=list)

    def client_count(self) -> int:
        return self.clients

    def take_connection(self) -> bool:
        self.rate_tokens -= 1
        return self.rate_tokens >= 0

    def take_iam_throttle(self) -> bool:
        if self.iam_throttled:
            self.iam_throttled -= 1
            return True
        return False

    def admin_answer(self, sql: str) -> tuple[bytes, bytes]:
        self.admin_queries.append(sql)
        return m.row_description(["n"]), m.data_row([1]) + m.command_complete("SHOW 1")


def proxy(**settings: object) -> FakeProxy:
    target = BackendTarget.from_dsn("postgresql://app@127.0.0.1:5432/app")
    fake = FakeProxy(ProxySettings(backend=target, host="127.0.0.1", port=6432, **settings))  # type: ignore[arg-type]
    if fake.settings.auth == "scram":
        fake.scram = ScramVerifier(fake.settings.users)
    return fake


def handshake(ctx: FakeProxy) -> ClientHandshake:
    return ClientHandshake(ctx, Parser(frontend=True), PID, KEY)


def feed(login: ClientHandshake, data: bytes) -> list[HandshakeAction]:
    """``data`` one byte at a time: nothing may happen before the last byte of a message."""
    for i in range(len(data) - 1):
        assert login.receive_data(data[i : i + 1]) == []
    return login.receive_data(data[-1:])


def welcome(reported: dict[str, str] | None = None) -> bytes:
    reported = reported or BASELINE
    return (
        m.auth_ok()
        + b"".join(m.parameter_status(k, v) for k, v in reported.items())
        + m.backend_key_data(PID, KEY)
        + m.ready_for_query("I")
    )


def startup(user: str = "app", database: str = "app", **params: str) -> bytes:
    return m.startup_message({"user": user, "database": database, **params})


def fatal_code(action: HandshakeAction) -> str:
    assert isinstance(action, Close) and action.last_words[:1] == b"E"
    fields = m.read_error(action.last_words[5:])
    assert fields["S"] == "FATAL"
    return fields["C"]


# -- startup -----------------------------------------------------------------------------------
def test_a_plain_startup_logs_in_and_reports_the_servers_parameters() -> None:
    login = handshake(proxy())
    assert feed(login, startup()) == [Send(welcome()), LoggedIn({}, dict(BASELINE))]
    assert login.phase is Phase.READY and login.user == "app"


def test_startup_settings_follow_the_client_and_are_reported_in_its_spelling() -> None:
    login = handshake(proxy())
    reported = {**BASELINE, "DateStyle": "iso"}
    actions = feed(login, startup(DateStyle="iso", application_name="app one"))
    assert actions == [
        Send(welcome(reported)),
        LoggedIn({"datestyle": "iso", "application_name": "app one"}, reported),
    ]


def test_what_the_client_pipelines_after_login_stays_in_the_parser_for_the_session() -> None:
    ctx = proxy()
    login = handshake(ctx)
    assert login.receive_data(startup() + m.query("SELECT 1"))[-1] == LoggedIn({}, dict(BASELINE))
    assert login.parser.messages()[0].type == "Q"


def test_a_database_not_served_is_refused() -> None:
    (close,) = feed(handshake(proxy()), startup(database="other"))
    assert fatal_code(close) == "3D000"


# -- TLS ---------------------------------------------------------------------------------------
def test_an_ssl_request_is_accepted_when_the_proxy_has_a_certificate() -> None:
    login = handshake(proxy(require_tls=True))
    login.ctx.tls_offered = True  # type: ignore[misc]
    assert feed(login, m.ssl_request()) == [Send(b"S"), StartTls()]
    # the client's startup packet may arrive before the driver has wrapped the socket
    assert login.receive_data(startup()) == []
    assert login.tls_started() == [Send(welcome()), LoggedIn({}, dict(BASELINE))]
    assert login.tls


def test_an_ssl_request_is_refused_without_a_certificate_and_plaintext_goes_on() -> None:
    login = handshake(proxy())
    assert feed(login, m.ssl_request()) == [Send(b"N")]
    assert feed(login, m.gssenc_request()) == [Send(b"N")]
    assert feed(login, startup())[-1] == LoggedIn({}, dict(BASELINE))


def test_plaintext_is_refused_when_tls_is_required() -> None:
    ctx = proxy(require_tls=True)
    (close,) = feed(handshake(ctx), startup())
    assert fatal_code(close) == "28000" and ctx.counters["auth_failures"] == 1


# -- SCRAM -------------------------------------------------------------------------------------
def scram_login(password: str) -> tuple[FakeProxy, ClientHandshake, list[HandshakeAction]]:
    from scramp import ScramClient

    ctx = proxy(auth="scram", users={"app": "s3cret"})
    login = handshake(ctx)
    assert feed(login, startup()) == [Send(m.auth_sasl(["SCRAM-SHA-256"]))]
    client = ScramClient(["SCRAM-SHA-256"], "app", password)
    (server_first,) = feed(login, m.sasl_initial_response("SCRAM-SHA-256", client.get_client_first().encode()))
    assert isinstance(server_first, Send)
    code, data = m.read_auth(server_first.data[5:])
    assert code == m.AUTH_SASL_CONTINUE
    client.set_server_first(data.decode())
    actions = feed(login, m.sasl_response(client.get_client_final().encode()))
    if password == "s3cret":
        final = actions[0]
        assert isinstance(final, Send)
        code, data = m.read_auth(final.data[5:])
        assert code == m.AUTH_SASL_FINAL
        client.set_server_final(data.decode())  # the proxy proves it knows the password too
    return ctx, login, actions


def test_scram_with_the_right_password_logs_in() -> None:
    ctx, login, actions = scram_login("s3cret")
    assert actions[1:] == [Send(welcome()), LoggedIn({}, dict(BASELINE))]
    assert login.phase is Phase.READY and ctx.counters["auth_failures"] == 0


def test_scram_with_a_wrong_password_is_refused() -> None:
    ctx, login, (close,) = scram_login("wrong")
    assert fatal_code(close) == "28P01" and b"password authentication failed" in close.last_words  # type: ignore[union-attr]
    assert login.phase is Phase.CLOSED and ctx.counters["auth_failures"] == 1


def test_scram_with_another_mechanism_is_refused() -> None:
    login = handshake(proxy(auth="scram", users={"app": "s3cret"}))
    feed(login, startup())
    (close,) = feed(login, m.sasl_initial_response("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=x"))
    assert fatal_code(close) == "28P01"


# -- IAM ---------------------------------------------------------------------------------------
def iam_proxy() -> FakeProxy:
    return proxy(auth="iam", iam_credentials={AKID: SECRET}, region="us-east-1")


def test_an_iam_token_is_accepted() -> None:
    login = handshake(iam_proxy())
    assert feed(login, startup()) == [Send(m.auth_request(m.AUTH_CLEARTEXT))]
    token = make_token("127.0.0.1", 6432, "app")
    assert feed(login, m.password(token.encode())) == [Send(welcome()), LoggedIn({}, dict(BASELINE))]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda: make_token("127.0.0.1", 6432, "app", secret="forged"), id="forged"),
        pytest.param(lambda: make_token("127.0.0.1", 6432, "someone-else"), id="other-user"),
        pytest.param(lambda: "s3cret", id="a-password"),
    ],
)
def test_a_bad_iam_token_is_refused(token) -> None:  # type: ignore[no-untyped-def]
    ctx = iam_proxy()
    login = handshake(ctx)
    feed(login, startup())
    (close,) = feed(login, m.password(token().encode()))
    assert fatal_code(close) == "28P01" and b"PAM authentication failed" in close.last_words  # type: ignore[union-attr]
    assert ctx.counters["auth_failures"] == 1


def test_a_throttled_iam_login_is_refused_before_its_token_is_read() -> None:
    ctx = iam_proxy()
    ctx.iam_throttled = 1
    login = handshake(ctx)
    feed(login, startup())
    (close,) = feed(login, m.password(b"not even a token"))
    assert fatal_code(close) == "28000" and ctx.counters["auth_failures"] == 0


def test_iam_over_plaintext_is_refused_when_tls_is_offered() -> None:
    ctx = iam_proxy()
    ctx.tls_offered = True
    (close,) = feed(handshake(ctx), startup())
    assert fatal_code(close) == "28000" and ctx.counters["auth_failures"] == 1


# -- RDS Proxy's refusals ----------------------------------------------------------------------
def test_the_client_cap_and_the_connection_rate_refuse_logins() -> None:
    ctx = proxy(max_client_connections=1)
    ctx.clients = 2
    (close,) = feed(handshake(ctx), startup())
    assert fatal_code(close) == "53300" and ctx.counters["client_cap_refusals"] == 1
    ctx = proxy(max_connection_rate=1.0)
    ctx.rate_tokens = 0
    (close,) = feed(handshake(ctx), startup())
    assert b"max_connection_rate=1 " in close.last_words and ctx.counters["rate_refusals"] == 1  # type: ignore[union-attr]


# -- cancel, borrow_on_connect, admin ----------------------------------------------------------
def test_a_cancel_request_cancels_by_key_and_closes() -> None:
    login = handshake(proxy())
    assert feed(login, m.cancel_request(99, 1234)) == [Cancel(99, 1234), Close()]
    assert login.phase is Phase.CLOSED


def test_borrow_on_connect_waits_for_a_backend_then_logs_in() -> None:
    ctx = proxy(borrow_on_connect=True)
    login = handshake(ctx)
    assert feed(login, startup()) == [Borrow()]
    assert login.phase is Phase.BORROWING
    assert login.borrowed() == [Send(welcome()), LoggedIn({}, dict(BASELINE))]
    assert ctx.counters["borrows"] == 1  # the login's borrow counts as one


def test_borrow_on_connect_fails_with_the_borrow_timeout_or_the_reason() -> None:
    login = handshake(proxy(borrow_on_connect=True))
    feed(login, startup())
    (close,) = login.borrow_timed_out(1.0, 3, None)
    assert fatal_code(close) == "53300"
    login = handshake(proxy(borrow_on_connect=True))
    feed(login, startup())
    (close,) = login.borrow_failed("refused")
    assert fatal_code(close) == "08001"
    login = handshake(proxy(borrow_on_connect=True))
    feed(login, startup())
    assert feed(login, m.terminate()) == [Close()]  # the client gave up while it waited


def test_the_admin_console_database_is_answered_by_the_handshake() -> None:
    ctx = proxy(borrow_on_connect=True)  # the console borrows nothing
    login = handshake(ctx)
    assert feed(login, startup(database="lambdapool")) == [Send(welcome()), LoggedIn({}, dict(BASELINE))]
    assert login.phase is Phase.ADMIN
    head, rest = ctx.admin_answer("SHOW POOLS")
    assert feed(login, m.query("SHOW POOLS")) == [Send(head + rest + m.ready_for_query("I"))]
    assert ctx.admin_queries[-1] == "SHOW POOLS"
    assert feed(login, m.terminate()) == [Close()]


# -- the wrong message in a phase ---------------------------------------------------------------
def test_a_password_before_it_was_asked_for_is_a_protocol_error() -> None:
    login = handshake(proxy(borrow_on_connect=True))
    feed(login, startup())
    with pytest.raises(ProtocolError, match="unexpected message 'p' during authentication"):
        feed(login, m.password(b"early"))


def test_a_query_during_authentication_is_a_protocol_error() -> None:
    login = handshake(proxy(auth="scram", users={"app": "s3cret"}))
    feed(login, startup())
    with pytest.raises(ProtocolError, match="unexpected message 'Q'"):
        feed(login, m.query("SELECT 1"))


def test_events_from_outside_in_the_wrong_phase_are_protocol_errors() -> None:
    login = handshake(proxy())
    with pytest.raises(ProtocolError, match="TLS started"):
        login.tls_started()
    with pytest.raises(ProtocolError, match="a backend was lent"):
        login.borrowed()
