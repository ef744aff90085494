"""What failed in a run, told once per distinct error: its type, its message and the traceback
of its first occurrence, in the handler's own frames.

Every fleet records a failed invocation's ``error_type``, ``error_message`` and, where there is
one, ``error_trace``: the traceback as awslambdaric posts it to the Runtime API (``stackTrace``,
frames formatted by ``traceback.format_list``), as a Cloud Functions server or a light instance
raised it. :func:`traceback_text` keeps the handler's own frames: those before the first frame of
the handler's code (the runtime client, functions-framework and Flask, lambdapool's decorator,
importlib running the module) say nothing about the bug. Errors whose messages differ only in
numbers (a pid, a count of attempts, a duration) are one error.
"""

from __future__ import annotations

import os
import re
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lambdapool.tools.emulator.results import InvocationResult

_FRAME = re.compile(r'\s*File "([^"]+)", line \d+')
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
SHOWN_ERRORS = 10  # distinct errors printed in full; --json has them all
SHOWN_LINES = 40  # lines of a traceback printed (its end: where it was raised)
SHOWN_MESSAGE_LINES = 15


def _foreign_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.add(str(Path(__file__).resolve().parents[2]))  # lambdapool itself (lambdapool/tools/emulator/..)
    return tuple(os.path.join(r, "") for r in roots)


_FOREIGN = _foreign_roots()


def _is_foreign(filename: str) -> bool:
    """Not the handler's own code: the standard library, an installed package, lambdapool."""
    return filename.startswith(("<", *_FOREIGN)) or "/site-packages/" in filename or "/dist-packages/" in filename


def own_frames(frames: Sequence[str]) -> list[str]:
    """``frames`` (each ``  File "...", line N, in f\\n    code\\n``) from the first that is the
    handler's own; all of them if none is (the error came from below the handler)."""
    for i, frame in enumerate(frames):
        match = _FRAME.match(frame)
        if match and not _is_foreign(match.group(1)):
            return list(frames[i:])
    return list(frames)


def traceback_text(frames: Sequence[str] | None) -> str | None:
    """The traceback of ``frames`` as Python prints it, the handler's own frames only."""
    kept = [f if f.endswith("\n") else f + "\n" for f in own_frames(frames or []) if f]
    return "Traceback (most recent call last):\n" + "".join(kept) if kept else None


def split_frames(text: str) -> list[str]:
    """Formatted frames out of a printed traceback's frame lines."""
    frames: list[str] = []
    for line in text.splitlines(keepends=True):
        if _FRAME.match(line) or not frames:
            frames.append(line)
        else:
            frames[-1] += line
    return frames


@dataclass
class DistinctError:
    """One error, however many invocations it failed: ``first`` is its earliest occurrence."""

    type: str
    message: str
    trace: str | None
    first: InvocationResult
    count: int = 0
    by_scenario: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "traceback": self.trace,
            "count": self.count,
            "by_scenario": self.by_scenario,
            "first": {
                "request_id": self.first.request_id,
                "instance_id": self.first.instance_id,
                "cold": self.first.cold,
                "init_failed": self.first.init_failed,
            },
        }


def distinct_errors(scenarios: Mapping[str, Sequence[InvocationResult]]) -> list[DistinctError]:
    """The failed invocations of every scenario, one entry per distinct error, in the order
    they first happened."""
    failed = sorted(
        ((r.started_at, name, r) for name, results in scenarios.items() for r in results if not r.ok),
        key=lambda item: item[0],
    )
    found: dict[tuple[str, str], DistinctError] = {}
    for _, name, r in failed:
        kind, message = r.error_type or "Unknown", r.error_message or ""
        error = found.setdefault((kind, _NUMBER.sub("#", message)), DistinctError(kind, message, r.error_trace, r))
        error.count += 1
        error.by_scenario[name] = error.by_scenario.get(name, 0) + 1
        if error.trace is None and r.error_trace is not None:  # (the first one may have had none)
            error.trace = r.error_trace
    return list(found.values())


def describe(errors: Sequence[DistinctError], scenarios: int = 1) -> str:
    """The errors for a terminal: type, count, message, where it first happened, traceback."""
    if not errors:
        return ""
    lines = [f"{len(errors)} distinct error{'s' if len(errors) > 1 else ''} (with the traceback of the first of each):"]
    for error in errors[:SHOWN_ERRORS]:
        where = ", ".join(f"{n} {c}" for n, c in error.by_scenario.items()) if scenarios > 1 else ""
        count = f"{error.count} invocation{'s' if error.count > 1 else ''}"
        lines += ["", f"{error.type}: {count}" + (f" ({where})" if where else "")]
        message = error.message.splitlines() or ["(no message)"]
        if len(message) > SHOWN_MESSAGE_LINES:
            message = [*message[:SHOWN_MESSAGE_LINES], f"... ({len(message) - SHOWN_MESSAGE_LINES} more lines)"]
        lines += ["  " + line for line in message]
        first = error.first
        state = "init failed" if first.init_failed else "cold" if first.cold else "warm"
        lines.append(f"  first: request {first.request_id} on {first.instance_id or '-'} ({state})")
        if error.trace:
            trace = error.trace.rstrip("\n").splitlines()
            if len(trace) > SHOWN_LINES:
                trace = [trace[0], f"  ... ({len(trace) - SHOWN_LINES} lines)", *trace[-(SHOWN_LINES - 1) :]]
            lines += ["  " + line for line in trace]
    if len(errors) > SHOWN_ERRORS:
        lines += ["", f"... and {len(errors) - SHOWN_ERRORS} more distinct errors (all of them in --json)"]
    return "\n".join(lines)
