"""The Lambda Runtime API (2018-06-01) on loopback, served with asyncio streams.

Each execution environment gets a listening port of its own, because the runtime client
knows only ``AWS_LAMBDA_RUNTIME_API=host:port`` and the fixed paths below: the port is how
the emulator tells environments apart. All ports live on one event loop, so one thread
serves every environment. HTTP is parsed by hand (request line, headers, a Content-Length or
chunked body, ``Expect: 100-continue``): that is all a runtime client sends, and it keeps
the hot path to a few microseconds (asyncio sets TCP_NODELAY, so no Nagle stalls either).

Each connection gets a number, passed to the handler as ``worker``: awslambdaric keeps one
connection per runtime process, so on Lambda Managed Instances (several worker processes
polling one port) the number tells the workers apart. A connection that closes while its
``GET /next`` waits is reported (``connection_closed``), so no invocation is handed to a
worker that is gone.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Protocol

from lambdapool.tools.emulator.failures import traceback_text

PREFIX = "/2018-06-01/runtime"
NEXT = f"{PREFIX}/invocation/next"
INIT_ERROR = f"{PREFIX}/init/error"
ERROR_TYPE_HEADER = "lambda-runtime-function-error-type"

_REASONS = {
    100: "Continue",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}


@dataclass
class NextInvocation:
    """What ``GET /next`` hands the runtime: the event and its headers."""

    request_id: str
    body: bytes
    deadline_ms: int
    function_arn: str
    trace_id: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def response_headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": self.request_id,
            "Lambda-Runtime-Deadline-Ms": str(self.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": self.function_arn,
            "Lambda-Runtime-Trace-Id": self.trace_id,
            **self.headers,
        }


class RuntimeHandler(Protocol):
    """One environment's side of the API; the status codes returned are sent to the runtime."""

    async def next_invocation(self, worker: int) -> NextInvocation: ...

    def connection_closed(self, worker: int) -> None: ...

    def invocation_response(self, request_id: str, body: bytes) -> int: ...

    def invocation_error(self, request_id: str, error_type: str, body: bytes) -> int: ...

    def init_error(self, error_type: str, body: bytes) -> int: ...


async def serve(handler: RuntimeHandler, host: str = "127.0.0.1") -> asyncio.Server:
    """Listen on a free port of ``host`` for one environment's runtime client."""
    numbers = itertools.count(1)
    return await asyncio.start_server(lambda r, w: _connection(handler, next(numbers), r, w), host, 0)


def error_fields(error_type: str, body: bytes) -> tuple[str, str]:
    """(errorType, errorMessage) of an error the runtime posted; the header's type wins."""
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        doc = {"errorMessage": body.decode(errors="replace")}
    if not isinstance(doc, dict):
        doc = {"errorMessage": str(doc)}
    return (error_type or str(doc.get("errorType") or "Unhandled"), str(doc.get("errorMessage", "")))


def error_trace(body: bytes) -> str | None:
    """The traceback of an error the runtime posted (``stackTrace``: formatted frames), the
    handler's own frames; None if it sent none (an import error, a timeout)."""
    try:
        stack = json.loads(body or b"{}").get("stackTrace")
    except (ValueError, AttributeError):
        return None
    if not isinstance(stack, list):
        return None
    return traceback_text([str(frame) for frame in stack])


async def _connection(
    handler: RuntimeHandler, worker: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while (request := await _read_request(reader, writer)) is not None:
            status, headers, body = await _route(handler, worker, reader, *request)
            writer.write(_response(status, headers, body))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        pass
    except asyncio.CancelledError:  # the environment is gone: its GET /next will never be answered
        pass
    finally:
        try:
            writer.close()
        except RuntimeError:  # collected after the fleet's loop closed (a worker's open connection)
            return
        handler.connection_closed(worker)


async def _next_unless_closed(handler: RuntimeHandler, worker: int, reader: asyncio.StreamReader) -> NextInvocation:
    """``GET /next``, given up if the client goes away meanwhile (a runtime client sends
    nothing while it waits: any byte, or EOF, means the connection is done with)."""
    task = asyncio.ensure_future(handler.next_invocation(worker))
    watch = asyncio.ensure_future(reader.read(1))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
        await asyncio.wait({watch})  # out of the reader before anyone reads from it again
    if task.cancelled() or not task.done():
        raise ConnectionResetError("the runtime client left while waiting for an invocation")
    if watch.done() and not watch.cancelled():  # answered, but the client is gone or misbehaved
        raise ConnectionResetError("the runtime client left while waiting for an invocation")
    return task.result()


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # the client closed between requests
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("expect", "").lower() == "100-continue":  # curl asks before a large POST
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length") or 0))
    return method, target, headers, body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _response(status: int, headers: dict[str, str], body: bytes) -> bytes:
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


async def _route(
    handler: RuntimeHandler,
    worker: int,
    reader: asyncio.StreamReader,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes,
) -> tuple[int, dict[str, str], bytes]:
    path = target.split("?", 1)[0]
    if path == NEXT:
        if method != "GET":
            return 405, {}, b""
        invocation = await _next_unless_closed(handler, worker, reader)
        return 200, invocation.response_headers(), invocation.body
    if method != "POST":
        return (405 if path.startswith(PREFIX) else 404), {}, b""
    if path == INIT_ERROR:
        return handler.init_error(headers.get(ERROR_TYPE_HEADER, ""), body), {}, b""
    rest = path[len(f"{PREFIX}/invocation/") :] if path.startswith(f"{PREFIX}/invocation/") else ""
    request_id, _, action = rest.partition("/")
    if request_id and action == "response":
        return handler.invocation_response(request_id, body), {}, b""
    if request_id and action == "error":
        return handler.invocation_error(request_id, headers.get(ERROR_TYPE_HEADER, ""), body), {}, b""
    return 404, {}, b'{"errorMessage":"unknown path","errorType":"InvalidRequest"}'
