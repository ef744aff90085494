#!/usr/bin/env python3
"""Generate the sync modules from their hand-written async originals (httpcore's unasync idea).

    python tools/unasync.py          # rewrite the generated files
    python tools/unasync.py --check  # exit 1 if a generated file is stale (the tests run this)

Each substitution must be used at least once, so a stale rule fails loudly.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [
    ("lambdapool/_warm_async.py", "lambdapool/_warm.py"),
    ("lambdapool/_lend_async.py", "lambdapool/_lend.py"),
]
RULES = [
    (r"(?s)^[ \t]*# async only: begin\n.*?^[ \t]*# async only: end\n", ""),
    (r"^.*# async only\n", ""),
    (r"^import asyncio\n", ""),
    (r"\bresult = (configure\(conn\))$", r"\1"),  # only the async original awaits what configure returns
    (r"\basync def ", "def "),
    (r"\bawait ", ""),
    (r"\basyncio\.sleep\b", "time.sleep"),
    (r"\bAsyncDriver\b", "Driver"),
    (r"\bAsyncSlots\b", "Slots"),
    (r"is_async: Literal\[True\] = True", "is_async: Literal[False] = False"),
    (r"\blambdapool\._warm_async\b", "lambdapool._warm"),
    (r"\bAsyncConnector\b", "Connector"),
    (r"\bAsyncWarmConnection\b", "WarmConnection"),
    (r"\baconnect_params\b", "connect_params"),
    (r"\bakeep_warm\b", "keep_warm"),
    (r"\bAsyncLender\b", "Lender"),
    (r"\bAsyncAdhocBlock\b", "AdhocBlock"),
    (r"\bAsyncBlockOnly\b", "SyncBlockOnly"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"``async with db.connection\(\)``", "``with db.connection()``"),
    (r"\(asyncio drivers\)", "(sync drivers)"),
    (r"Written by hand; ``(\w+).py`` \(sync drivers\) is generated from it by ``tools/unasync.py``:\n"
     r"edit this file, then run ``python tools/unasync.py``.",
     r"DO NOT EDIT: generated from ``\1_async.py`` by ``tools/unasync.py``."),
]  # fmt: skip


def convert(text: str, used: set[str]) -> str:
    for pattern, repl in RULES:
        text, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
        if n:
            used.add(pattern)
    return text


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    used: set[str] = set()
    outputs = {dst: convert((ROOT / src).read_text(), used) for src, dst in PAIRS}
    unused = [pattern for pattern, _ in RULES if pattern not in used]
    if unused:
        print(f"unasync: rules that matched nothing (update tools/unasync.py): {unused}", file=sys.stderr)
        return 1
    for dst, out in outputs.items():
        target = ROOT / dst
        if target.exists() and target.read_text() == out:
            continue
        if check:
            stale.append(dst)
        else:
            target.write_text(out)
            print(f"wrote {dst}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python tools/unasync.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
