"""One Cloud Functions emulator instance: ``python -m functions_framework`` itself, watched.

functions-framework answers a request that raised with a bare 500 and prints the traceback to
the server's log, where a fleet cannot tell which request it belongs to. This runs the same
command (``runpy``, as ``-m`` does) with one observer added: Flask's ``got_request_exception``
signal writes each request's exception (``errorType``, ``errorMessage``, ``stackTrace``, as
awslambdaric posts them) with the request's ``Function-Execution-Id`` as one JSON line to the
file named by ``_LAMBDAPOOL_CF_ERRORS``; a module that raised at import is written with no id.
The responses and the log stay as functions-framework makes them.
"""

from __future__ import annotations

import json
import os
import runpy
import traceback
from typing import Any

ERRORS_FILE = "_LAMBDAPOOL_CF_ERRORS"  # (not LAMBDAPOOL_*: that would be taken for a setting)


def _write(path: str, request_id: str | None, exc: BaseException) -> None:
    entry = {
        "id": request_id,
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }
    with open(path, "a") as out:  # one write per line: lines from the worker's threads stay whole
        out.write(json.dumps(entry) + "\n")


def main() -> None:
    path = os.environ.pop(ERRORS_FILE, "")
    if path:
        from flask import got_request_exception, request

        def on_exception(sender: Any, exception: BaseException, **extra: Any) -> None:
            _write(path, request.headers.get("Function-Execution-Id"), exception)

        got_request_exception.connect(on_exception, weak=False)
    try:
        runpy.run_module("functions_framework", run_name="__main__", alter_sys=True)
    except Exception as exc:  # the function's module raised at import: the server exits
        if path:
            _write(path, None, exc)
        raise


if __name__ == "__main__":
    main()
