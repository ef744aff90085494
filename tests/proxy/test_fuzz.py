"""Malformed input over real sockets: each bad client gets an error or a closed connection,
and the proxy keeps serving a well-behaved client the whole time."""

from __future__ import annotations

import random
import socket
import struct
import threading

from lambdapool.tools.proto import messages as m

STARTUP = m.startup_message({"user": "postgres", "database": "postgres"})


def answer_of(host: str, port: int, payload: bytes, *, timeout: float = 5.0, half_close: bool = True) -> bytes:
    """Send ``payload`` (then half-close, so a partial message ends in EOF) and read until the
    proxy closes (or stops talking)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            return b""
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, OSError):
            pass
        return b"".join(chunks)


def bad_payloads(rng: random.Random) -> list[tuple[str, bytes]]:
    cases = [
        ("absurd startup length", struct.pack("!i", 2**31 - 1) + b"\0" * 12),
        ("negative startup length", struct.pack("!i", -8) + b"\0" * 4),
        ("protocol 2", struct.pack("!ii", 8, 2 << 16)),
        ("startup without user", m.startup_message({"database": "postgres"})),
        ("absurd message length", STARTUP + b"Q" + struct.pack("!i", 2**31 - 1) + b"select"),
        ("short message length", STARTUP + b"Q" + struct.pack("!i", 1)),
        ("unknown message type", STARTUP + b"\x01" + struct.pack("!i", 4)),
        ("query without NUL", STARTUP + m.frame("Q", b"select 1")),
        ("parse with bad counts", STARTUP + m.frame("P", b"s\0select 1\0\x00\x05")),
        ("bind without names", STARTUP + m.frame("B", b"portal")),
        ("describe of nothing", STARTUP + m.frame("D", b"Z\0")),
        ("truncated query", STARTUP + m.query("select 1")[:-3]),
        ("truncated startup", STARTUP[:-5]),
        ("password before asked", STARTUP + m.password(b"x")),
        ("cancel for nobody", m.cancel_request(1, 2)),
    ]
    for n in range(40):
        size = rng.randint(1, 300)
        noise = bytes(rng.getrandbits(8) for _ in range(size))
        cases.append((f"random bytes {n}", noise))
        cases.append((f"random after startup {n}", STARTUP + noise))
    return cases


def test_malformed_clients_are_refused_alone_while_others_are_served(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=2)
    served, errors = [0], []
    stop = threading.Event()

    def good_client() -> None:
        try:
            with psycopg.connect(proxy.dsn, autocommit=True) as conn:
                while not stop.is_set():
                    assert conn.execute("SELECT %s::int", (served[0],)).fetchone() == (served[0],)
                    served[0] += 1
        except Exception as exc:
            errors.append(exc)

    worker = threading.Thread(target=good_client)
    worker.start()
    try:
        for why, payload in bad_payloads(random.Random(1234)):
            # Complete but invalid input must be answered before the proxy sees an EOF.
            complete = not why.startswith(("random", "truncated"))
            reply = answer_of(proxy.host, proxy.port, payload, half_close=not complete)
            # Either nothing (closed) or protocol bytes: an ErrorResponse, auth request, or
            # the start of a normal session for noise that happened to be a valid prefix.
            if reply:
                assert reply[:1] in (b"E", b"R", b"N", b"S", b"Z", b"1", b"2", b"C", b"T"), (why, reply[:40])
            if why in ("absurd message length", "unknown message type", "query without NUL", "absurd startup length"):
                assert b"08P01" in reply, (why, reply[:80])
    finally:
        stop.set()
        worker.join(30)
    assert not errors, errors
    assert served[0] > 0
    with psycopg.connect(proxy.dsn) as conn:  # and a new client still gets in
        assert conn.execute("SELECT 1").fetchone() == (1,)
    stats = proxy.stats()
    assert stats["clients"] == 0 or stats["clients"] <= 1
    assert stats["backends_in_use"] == 0


def test_absurd_length_gets_a_protocol_error_not_an_allocation(make_proxy):
    proxy = make_proxy(max_backends=1)
    reply = answer_of(proxy.host, proxy.port, STARTUP + b"Q" + struct.pack("!i", 2**31 - 1))
    assert b"08P01" in reply and b"invalid message length" in reply


def test_wrong_password_is_refused(make_proxy):
    import psycopg
    import pytest

    proxy = make_proxy(max_backends=1, auth="scram", users={"app": "pw"})
    for _ in range(3):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(proxy.dsn, password="nope")
    with psycopg.connect(proxy.dsn, password="pw") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert proxy.stats()["auth_failures"] == 3
