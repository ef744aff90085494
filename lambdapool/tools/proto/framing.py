"""Sans-IO framing of the Postgres wire protocol (v3): bytes in, events out.

Theory of operation
-------------------
A connection is a byte stream cut into messages. The caller feeds whatever arrived with
:meth:`Parser.receive_data` and pulls events with :meth:`Parser.next_event` until it returns
:data:`NEED_DATA`. Nothing here reads a socket, so one byte at a time works as well as a
megabyte at a time, and the tests need no sockets (as in h11).

* A **frontend** stream (client to server) starts in the *startup* phase, where messages have
  no type byte: ``int32 length, int32 code, ...``. The code says what it is: SSLRequest,
  GSSENCRequest, CancelRequest or a StartupMessage (protocol 3.x). SSLRequest and
  GSSENCRequest keep the stream in the startup phase (the client sends a StartupMessage next);
  a StartupMessage ends it. From then on every message is ``type byte, int32 length, body``.
* A **backend** stream (server to client) is typed from the first byte, except for the single
  ``S``/``N`` byte that answers an SSLRequest (``expect_ssl_answer()``).
* Lengths are checked before anything is kept: a length below 4, above the limit, or a
  startup packet over 10000 bytes (Postgres' own limit) raises :class:`ProtocolError` at once,
  without waiting for (or allocating) the body. After an error the parser stays broken.

Events are :class:`Message` (a typed message: the type as a one-character str and the whole
frame, header included, so a relay can forward it untouched) or one of the startup events.
Bodies are parsed on demand by :mod:`lambdapool.tools.proto.messages`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Final, NamedTuple

_I32 = struct.Struct("!i")
_HDR = struct.Struct("!ci")


class NeedData(enum.Enum):
    """The type of :data:`NEED_DATA` (a one-member enum, so type checkers narrow ``is NEED_DATA``)."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA
"""Returned by :meth:`Parser.next_event` when the buffer holds no complete message."""

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_3 = 3 << 16
MAX_STARTUP_PACKET = 10000
DEFAULT_MAX_MESSAGE = 256 * 1024 * 1024

# Message types a client may send once started (Postgres closes the connection on others).
FRONTEND_TYPES = frozenset("QPBEDCSHXFdcfp")


_CHARS = [chr(i) for i in range(256)]
_FRONTEND_BYTES = frozenset(ord(c) for c in FRONTEND_TYPES)
_ALL_BYTES = frozenset(range(256))


class ProtocolError(Exception):
    """The peer broke the protocol; the connection cannot continue."""

    __module__ = "lambdapool.tools.proto"


class Message(NamedTuple):
    """One typed message: ``type`` (e.g. ``"Q"``) and ``data``, the whole frame.

    A NamedTuple rather than a dataclass: a relay makes one per message, so it must be cheap.
    """

    type: str
    data: bytes

    @property
    def body(self) -> bytes:
        return self.data[5:]


Frame = tuple[str, bytes]
"""A typed message as a plain ``(type, whole frame)`` tuple: what :meth:`Parser.frames` returns
(a :class:`Message` is one too, with names for its two fields)."""


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks for TLS; answer one byte, ``S`` (then handshake) or ``N``."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption; a pooler answers ``N``."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Cancel the query running on the connection with this key (sent on a new connection)."""

    process_id: int
    secret_key: int


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The first real message: protocol version and parameters (``user``, ``database``, ...)."""

    protocol: int
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SSLAnswer:
    """The server's one-byte answer to an SSLRequest."""

    accepted: bool


Event = Message | SSLRequest | GSSENCRequest | CancelRequest | StartupMessage | SSLAnswer


class Parser:
    """Frames one direction of a connection; ``frontend=True`` for what a client sends."""

    def __init__(self, *, frontend: bool, max_message: int = DEFAULT_MAX_MESSAGE, startup: bool | None = None) -> None:
        # The buffer is immutable bytes: a chunk holding whole messages is parsed in place and
        # each message is one slice (one copy). A large message arriving in pieces collects
        # in ``_more`` until it is complete, so assembling it stays linear.
        self._buf = b""
        self._pos = 0
        self._more: list[bytes] = []
        self._more_len = 0
        self._need = 0
        # a frontend begins with its startup packet; ``startup=False`` picks it up after one
        self._startup = frontend if startup is None else startup
        self._frontend = frontend
        self._ssl_answer = False
        self._max = max_message
        self._error: ProtocolError | None = None

    @property
    def in_startup(self) -> bool:
        return self._startup

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as events (a partial message)."""
        return len(self._buf) - self._pos + self._more_len

    def expect_ssl_answer(self) -> None:
        """The next byte is the server's ``S``/``N`` answer to our SSLRequest."""
        self._ssl_answer = True

    def receive_data(self, data: bytes) -> None:
        if self._pos >= len(self._buf) and not self._more:
            self._buf = bytes(data)
            self._pos = 0
            return
        self._more.append(bytes(data))
        self._more_len += len(data)
        if self._more_len >= self._need:
            self._join()

    def _join(self) -> None:
        self._buf = self._buf[self._pos :] + b"".join(self._more)
        self._pos = 0
        self._more.clear()
        self._more_len = self._need = 0

    def take_rest(self) -> bytes:
        """Everything not yet parsed (e.g. bytes that arrived before a TLS upgrade)."""
        self._join()
        rest, self._buf = self._buf, b""
        return rest

    def fail(self, message: str) -> ProtocolError:
        """Record ``message`` as this stream's error (every later call raises it) and return it."""
        self._error = ProtocolError(message)
        return self._error

    def next_event(self) -> Event | NeedData:
        """The next complete event, or :data:`NEED_DATA`; raises :class:`ProtocolError`."""
        if self._error is not None:
            raise self._error
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if self._ssl_answer:
            if avail < 1:
                return NEED_DATA
            answer = buf[pos]
            self._pos = pos + 1
            self._ssl_answer = False
            if answer not in b"SN":
                raise self.fail(f"invalid answer to SSLRequest: {bytes([answer])!r}")
            return SSLAnswer(answer == ord("S"))
        if self._startup:
            return self._next_startup(buf, pos, avail)
        if avail < 5:
            return NEED_DATA
        kind, length = _HDR.unpack_from(buf, pos)
        if length < 4 or length > self._max:
            raise self.fail(f"invalid message length {length} for message type {kind!r}")
        if self._frontend and kind.decode("latin-1") not in FRONTEND_TYPES:
            raise self.fail(f"invalid frontend message type {kind!r}")
        end = pos + 1 + length
        if end > len(buf):
            self._need = end - len(buf)
            return NEED_DATA
        self._pos = end
        return Message(kind.decode("latin-1"), buf[pos:end])

    def _next_startup(self, buf: bytes, pos: int, avail: int) -> Event | NeedData:
        if avail < 4:
            return NEED_DATA
        (length,) = _I32.unpack_from(buf, pos)
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise self.fail(f"invalid startup packet length {length}")
        if avail < 8:
            return NEED_DATA
        (code,) = _I32.unpack_from(buf, pos + 4)
        fixed = {SSL_REQUEST_CODE: 8, GSSENC_REQUEST_CODE: 8, CANCEL_REQUEST_CODE: 16}.get(code)
        if fixed is not None and length != fixed:
            raise self.fail(f"invalid length {length} for startup code {code}")
        if fixed is None and code >> 16 != 3:
            raise self.fail(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
        if avail < length:
            return NEED_DATA
        body = buf[pos + 8 : pos + length]
        self._pos = pos + length
        if code == SSL_REQUEST_CODE:
            return SSLRequest()
        if code == GSSENC_REQUEST_CODE:
            return GSSENCRequest()
        if code == CANCEL_REQUEST_CODE:
            pid, key = struct.unpack("!ii", body)
            return CancelRequest(pid, key)
        self._startup = False
        return StartupMessage(code, _parse_startup_params(body, self))

    def events(self) -> list[Event]:
        """All complete events now buffered; the same as calling :meth:`next_event` until
        :data:`NEED_DATA`."""
        out: list[Event] = []
        while self._startup or self._ssl_answer or self._error is not None:
            event = self.next_event()
            if event is NEED_DATA:
                return out
            out.append(event)
        out.extend(self.messages())
        return out

    def messages(self) -> list[Message]:
        """All complete typed messages now buffered, once past the startup packet (or SSL answer)."""
        new = tuple.__new__
        return [new(Message, frame) for frame in self.frames()]

    def frames(self) -> list[Frame]:
        """:meth:`messages` as plain tuples, for a relay's hot path (a tuple subclass costs a
        call per message)."""
        if self._error is not None:
            raise self._error
        if self._startup or self._ssl_answer:
            raise RuntimeError("Parser.frames() called before the startup packet or SSL answer was read")
        out: list[Frame] = []
        buf, pos, limit = self._buf, self._pos, self._max
        allowed = _FRONTEND_BYTES if self._frontend else _ALL_BYTES
        total = len(buf)
        unpack = _I32.unpack_from
        append = out.append
        while total - pos >= 5:
            kind = buf[pos]
            (length,) = unpack(buf, pos + 1)
            end = pos + 1 + length
            if length < 4 or length > limit or kind not in allowed:
                self._pos = pos
                self.next_event()  # raises the same ProtocolError as the slow path
            if end > total:
                self._need = end - total
                break
            append((_CHARS[kind], buf[pos:end]))
            pos = end
        self._pos = pos
        return out


def _parse_startup_params(body: bytes, parser: Parser) -> dict[str, str]:
    parts = body.split(b"\0")
    # Well formed: k\0v\0...k\0v\0\0 -> split gives [k, v, ..., k, v, "", ""]
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"" or len(parts) % 2 != 0:
        raise parser.fail("malformed startup packet: parameters must be NUL-terminated pairs")
    params: dict[str, str] = {}
    for i in range(0, len(parts) - 2, 2):
        try:
            params[parts[i].decode()] = parts[i + 1].decode()
        except UnicodeDecodeError:
            raise parser.fail("startup parameters are not valid UTF-8") from None
    if "user" not in params:
        raise parser.fail('no PostgreSQL user name specified in startup packet (parameter "user")')
    return params
