"""The virtual admin database (``lambdapool`` or ``pgbouncer``): ``SHOW POOLS`` / ``SHOW STATS``.

Column names follow PgBouncer's admin console where one exists (``cl_active``, ``sv_idle``,
``total_xact_count``...), so tools that read PgBouncer's console can read ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from lambdapool.tools.proto import messages as m
from lambdapool.tools.proto.encodings import decode_sql

READY_IDLE = m.ready_for_query("I")


def _table(columns: list[str], rows: list[list[object]], tag: str) -> tuple[bytes, bytes]:
    return m.row_description(columns), b"".join(m.data_row(r) for r in rows) + m.command_complete(f"{tag} {len(rows)}")


def answer(sql: str, stats: dict[str, Any], database: str, user: str) -> tuple[bytes, bytes]:
    """The reply to one admin query, without ReadyForQuery: (RowDescription, rows and tag).

    An unknown command gives (b"", ErrorResponse).
    """
    command = re.sub(r"\s+", " ", sql.strip().rstrip(";").strip()).upper()
    if command == "SHOW POOLS":
        return _table(
            [
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "sv_active",
                "sv_idle",
                "sv_login",
                "maxwait",
                "maxwait_us",
                "pool_mode",
                "max_backends",
            ],
            [
                [
                    database,
                    user,
                    stats["clients"] - stats["waiting"],
                    stats["waiting"],
                    stats["backends_in_use"],
                    stats["backends_idle"],
                    stats["backends_connecting"],
                    int(stats["max_wait_seconds"]),
                    int(stats["max_wait_seconds"] % 1 * 1e6),
                    "transaction",
                    stats["max_backends"],
                ]
            ],
            "SHOW",
        )
    if command == "SHOW STATS":
        keys = [k for k, v in stats.items() if not isinstance(v, dict)]
        return _table(["database", *keys], [[database, *(stats[k] for k in keys)]], "SHOW")
    if command in ("SHOW PINS", "SHOW PIN_REASONS"):
        return _table(["reason", "count"], [[k, v] for k, v in sorted(stats["pin_reasons"].items())], "SHOW")
    return b"", m.error_response(
        "42601",
        f"lambdapool local proxy admin console: unknown command {sql.strip()[:80]!r}; "
        "try SHOW POOLS, SHOW STATS or SHOW PINS",
    )


class Console:
    """One client of the admin database: simple queries, and just enough extended protocol for drivers."""

    def __init__(self, answer: Callable[[str], tuple[bytes, bytes]]) -> None:
        self.answer = answer  # SQL -> (RowDescription, rows and tag), as :func:`answer` gives
        self.sql = ""  # the last Parse's query
        self.result = (b"", b"")  # its answer, computed at Bind

    def reply(self, kind: str, body: bytes, codec: str) -> bytes | None:
        """What to send for one message (``codec``: the client's encoding); None for a Terminate."""
        if kind == "X":
            return None
        if kind == "Q":
            head, rest = self.answer(decode_sql(m.read_query_bytes(body), codec))
            return head + rest + READY_IDLE
        if kind == "P":
            self.sql = decode_sql(m.read_parse_bytes(body)[2], codec)
            return m.parse_complete()
        if kind == "B":
            self.result = self.answer(self.sql)
            return m.frame("2")
        if kind == "D":
            head = self.answer(self.sql)[0] if m.read_target(body)[0] == "P" else b""
            return head or m.frame("n")
        if kind == "E":
            return self.result[1]
        if kind == "S":
            return READY_IDLE
        return b""
