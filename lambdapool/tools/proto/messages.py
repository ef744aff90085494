"""Build Postgres messages, and read the bodies of the ones a pooler must understand.

Builders return whole frames (bytes ready to write). Readers take a :class:`Message` body and
raise :class:`ProtocolError` when it is malformed (a missing NUL, a short integer), never
IndexError or struct.error, so a relay can treat every parse failure the same way.
"""

from __future__ import annotations

import struct

from lambdapool.tools.proto.framing import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    PROTOCOL_3,
    SSL_REQUEST_CODE,
    ProtocolError,
)

# Authentication request codes (the int32 after an 'R').
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

# ReadyForQuery transaction status.
IDLE, IN_TRANSACTION, FAILED_TRANSACTION = "I", "T", "E"


def frame(kind: str, body: bytes = b"") -> bytes:
    return kind.encode("latin-1") + struct.pack("!i", len(body) + 4) + body


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


# -- frontend builders ---------------------------------------------------------------------
def startup_message(params: dict[str, str]) -> bytes:
    body = struct.pack("!i", PROTOCOL_3) + b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    return struct.pack("!ii", 8, GSSENC_REQUEST_CODE)


def cancel_request(process_id: int, secret_key: int) -> bytes:
    return struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, process_id, secret_key)


def query(sql: str) -> bytes:
    return frame("Q", _cstr(sql))


def parse(name: str, sql: str, param_oids: tuple[int, ...] = ()) -> bytes:
    return frame("P", _cstr(name) + _cstr(sql) + struct.pack(f"!h{len(param_oids)}i", len(param_oids), *param_oids))


def parse_raw(name: bytes, rest: bytes) -> bytes:
    """A Parse of ``rest`` (query, NUL, parameter types) under another statement name."""
    return frame("P", name + b"\0" + rest)


def bind(portal: str, statement: str, params: tuple[bytes | None, ...] = ()) -> bytes:
    """A Bind of text parameters (None: NULL), results in text."""
    values = b"".join(struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v for v in params)
    return frame(
        "B", _cstr(portal) + _cstr(statement) + struct.pack("!hh", 0, len(params)) + values + struct.pack("!h", 0)
    )


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return frame("E", _cstr(portal) + struct.pack("!i", max_rows))


def describe(kind: str, name: str) -> bytes:
    return frame("D", kind.encode() + _cstr(name))


def close(kind: str, name: str) -> bytes:
    return frame("C", kind.encode() + _cstr(name))


def sync() -> bytes:
    return frame("S")


def flush() -> bytes:
    return frame("H")


def terminate() -> bytes:
    return frame("X")


def password(secret: bytes) -> bytes:
    return frame("p", secret + b"\0")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return frame("p", _cstr(mechanism) + struct.pack("!i", len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return frame("p", data)


# -- backend builders ----------------------------------------------------------------------
def auth_request(code: int, data: bytes = b"") -> bytes:
    return frame("R", struct.pack("!i", code) + data)


def auth_ok() -> bytes:
    return auth_request(AUTH_OK)


def auth_sasl(mechanisms: list[str]) -> bytes:
    return auth_request(AUTH_SASL, b"".join(_cstr(m) for m in mechanisms) + b"\0")


def parameter_status(name: str, value: str) -> bytes:
    return frame("S", _cstr(name) + _cstr(value))


def backend_key_data(process_id: int, secret_key: int) -> bytes:
    return frame("K", struct.pack("!ii", process_id, secret_key))


def ready_for_query(status: str = IDLE) -> bytes:
    return frame("Z", status.encode())


def error_response(
    code: str, message: str, *, severity: str = "ERROR", detail: str | None = None, hint: str | None = None
) -> bytes:
    fields = [("S", severity), ("V", severity), ("C", code), ("M", message)]
    if detail:
        fields.append(("D", detail))
    if hint:
        fields.append(("H", hint))
    return frame("E", b"".join(k.encode() + _cstr(v) for k, v in fields) + b"\0")


def row_description(columns: list[str]) -> bytes:
    # Every column is text (OID 25), format 0.
    body = struct.pack("!h", len(columns)) + b"".join(
        _cstr(c) + struct.pack("!ihihih", 0, 0, 25, -1, -1, 0) for c in columns
    )
    return frame("T", body)


def data_row(values: list[object]) -> bytes:
    parts = [struct.pack("!h", len(values))]
    for value in values:
        if value is None:
            parts.append(struct.pack("!i", -1))
        else:
            raw = str(value).encode()
            parts.append(struct.pack("!i", len(raw)) + raw)
    return frame("D", b"".join(parts))


def command_complete(tag: str) -> bytes:
    return frame("C", _cstr(tag))


def parse_complete() -> bytes:
    return frame("1")


def close_complete() -> bytes:
    return frame("3")


def bind_complete() -> bytes:
    return frame("2")


# -- readers -------------------------------------------------------------------------------
def _split_cstr(body: bytes, start: int = 0) -> tuple[bytes, int]:
    end = body.find(b"\0", start)
    if end < 0:
        raise ProtocolError("string in message body is not NUL-terminated")
    return body[start:end], end + 1


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ProtocolError("message text is not valid UTF-8") from None


def read_query(body: bytes) -> str:
    """The SQL of a Query ('Q')."""
    sql, _ = _split_cstr(body)
    return _text(sql)


def read_parse(body: bytes) -> tuple[bytes, bytes, str]:
    """A Parse ('P'): (statement name, the rest of the body after the name, the SQL as UTF-8)."""
    name, rest, sql = read_parse_bytes(body)
    return name, rest, _text(sql)


# The relay reads SQL as bytes: a session's client_encoding may be anything (LATIN1, EUC_JP,
# SJIS...), and the text is only looked at, never changed (lambdapool.tools.proto.encodings decodes it).
def read_query_bytes(body: bytes, start: int = 0) -> bytes:
    """The SQL of a Query ('Q') body that begins at ``start``, as sent (in the session's client_encoding).

    ``start``: where the body begins in ``body`` (5 for a whole frame): the relay reads frames
    in place instead of copying each body out.
    """
    return _split_cstr(body, start)[0]


def read_parse_bytes(body: bytes, start: int = 0) -> tuple[bytes, bytes, bytes]:
    """A Parse ('P') from ``start``: (statement name, the rest of the body after the name, the SQL as sent)."""
    name, pos = _split_cstr(body, start)
    sql, after = _split_cstr(body, pos)
    if len(body) < after + 2:
        raise ProtocolError("Parse message is missing its parameter count")
    (count,) = struct.unpack_from("!h", body, after)
    if count < 0 or len(body) != after + 2 + 4 * count:
        raise ProtocolError(f"Parse message declares {count} parameter types but carries {len(body) - after - 2} bytes")
    return name, body[pos:], sql


def read_bind(body: bytes, start: int = 0) -> tuple[bytes, bytes, int]:
    """A Bind ('B') from ``start``: (portal, statement name, offset in ``body`` of what follows them)."""
    portal, pos = _split_cstr(body, start)
    stmt, rest = _split_cstr(body, pos)
    return portal, stmt, rest


def bind_with_statement(body: bytes, statement: bytes) -> bytes:
    """The Bind frame for ``body`` with its statement name replaced."""
    portal, _, rest = read_bind(body)
    return frame("B", portal + b"\0" + statement + b"\0" + body[rest:])


def read_target(body: bytes, start: int = 0) -> tuple[str, bytes]:
    """A Describe or Close ('D'/'C' from a client) from ``start``: ('S' or 'P', name)."""
    target = body[start : start + 1]
    if target not in (b"S", b"P"):
        raise ProtocolError("Describe/Close must name a statement ('S') or a portal ('P')")
    name, end = _split_cstr(body, start + 1)
    if end != len(body):
        raise ProtocolError("trailing bytes after Describe/Close name")
    return "S" if target == b"S" else "P", name


def read_ready(body: bytes) -> str:
    """ReadyForQuery ('Z'): the transaction status, 'I', 'T' or 'E'."""
    if len(body) != 1 or body not in (b"I", b"T", b"E"):
        raise ProtocolError(f"invalid ReadyForQuery status {body!r}")
    return body.decode()


def read_auth(body: bytes) -> tuple[int, bytes]:
    """An authentication request ('R'): (code, the data after it)."""
    if len(body) < 4:
        raise ProtocolError("authentication request too short")
    return struct.unpack_from("!i", body)[0], body[4:]


def read_sasl_mechanisms(data: bytes) -> list[str]:
    return [m.decode() for m in data.split(b"\0") if m]


def read_sasl_initial(body: bytes) -> tuple[str, bytes]:
    """A SASLInitialResponse ('p'): (mechanism, client-first message)."""
    mech, pos = _split_cstr(body)
    if len(body) < pos + 4:
        raise ProtocolError("SASLInitialResponse is missing its length")
    (length,) = struct.unpack_from("!i", body, pos)
    data = body[pos + 4 :]
    if length != len(data):
        raise ProtocolError(f"SASLInitialResponse says {length} bytes but carries {len(data)}")
    return _text(mech), data


def read_password(body: bytes) -> str:
    """A PasswordMessage ('p'): the cleartext password or token."""
    secret, end = _split_cstr(body)
    if end != len(body):
        raise ProtocolError("trailing bytes after password")
    return _text(secret)


def read_parameter_status(body: bytes) -> tuple[str, str]:
    name, pos = _split_cstr(body)
    value, _ = _split_cstr(body, pos)
    return _text(name), _text(value)


def read_backend_key(body: bytes) -> tuple[int, int]:
    if len(body) != 8:
        raise ProtocolError("BackendKeyData must carry 8 bytes")
    return struct.unpack("!ii", body)


def read_error(body: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse ('E'/'N'): fields by code ('C' SQLSTATE, 'M' message...)."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        value, pos = _split_cstr(body, pos + 1)
        fields[code] = value.decode(errors="replace")
    return fields


def read_data_row(body: bytes) -> list[str | None]:
    """A DataRow ('D' from a server) of text values."""
    try:
        (count,) = struct.unpack_from("!h", body)
        pos, out = 2, list[str | None]()
        for _ in range(count):
            (length,) = struct.unpack_from("!i", body, pos)
            pos += 4
            if length < 0:
                out.append(None)
            else:
                if pos + length > len(body):
                    raise struct.error
                out.append(_text(body[pos : pos + length]))
                pos += length
    except struct.error:
        raise ProtocolError("DataRow is truncated") from None
    return out
