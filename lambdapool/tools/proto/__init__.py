"""The Postgres wire protocol without I/O: framing (:mod:`.framing`) and messages (:mod:`.messages`).

Used by the local proxy (:mod:`lambdapool.tools.proxy`); usable by anything that needs to
read or write Postgres messages on its own sockets.
"""

from lambdapool.tools.proto.framing import (
    NEED_DATA,
    CancelRequest,
    Event,
    Frame,
    GSSENCRequest,
    Message,
    NeedData,
    Parser,
    ProtocolError,
    SSLAnswer,
    SSLRequest,
    StartupMessage,
)

__all__ = [
    "NEED_DATA",
    "CancelRequest",
    "Event",
    "Frame",
    "GSSENCRequest",
    "Message",
    "NeedData",
    "Parser",
    "ProtocolError",
    "SSLAnswer",
    "SSLRequest",
    "StartupMessage",
]
