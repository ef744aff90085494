"""Which SQL needs a session: RDS Proxy's pinning rules for PostgreSQL, as regexes.

RDS Proxy lends a backend for one transaction. A statement whose effect outlives the
transaction (session state) makes it *pin* the client to its backend until the client
disconnects. The rules follow the RDS Proxy user guide ("Avoiding pinning", PostgreSQL):
SQL-level ``SET`` / ``set_config`` / ``RESET``, ``PREPARE`` / ``EXECUTE`` / ``DEALLOCATE`` /
``DISCARD``, temporary tables, sequences and views, cursors declared outside a transaction
(or ``WITH HOLD``), ``LISTEN``, ``LOAD``, session-level advisory locks (the ``_xact_`` ones
are fine) and statements larger than 16 KB. ``SET LOCAL`` and ``set_config(..., true)`` last
only for the transaction, so they do not pin.

Protocol-level prepared statements (Parse/Bind) are not in this list: the proxy re-prepares
them on whichever backend serves the client (see ``session.py``).
"""

from __future__ import annotations

import re

MAX_UNPINNED_STATEMENT = 16 * 1024

# Comments and literals are blanked first so that 'SET' inside a string does not pin.
_NOISE = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$(\w*)\$.*?\$\1\$", re.S)

_STATEMENT_START = re.compile(
    r"(?:^|;)\s*(?:"
    r"(?P<set>SET)\s+(?!LOCAL\b|TRANSACTION\b|CONSTRAINTS?\b)"
    r"|(?P<reset>RESET)\b"
    r"|(?P<prepare>PREPARE)\s+(?!TRANSACTION\b)"
    r"|(?P<execute>EXECUTE)\b"
    r"|(?P<deallocate>DEALLOCATE)\b"
    r"|(?P<discard>DISCARD)\b"
    r"|(?P<listen>LISTEN)\b"
    r"|(?P<load>LOAD)\b"
    r"|(?P<temp>CREATE\s+(?:OR\s+REPLACE\s+)?(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\s+(?:UNLOGGED\s+)?(?P<temp_kind>TABLE|SEQUENCE|VIEW|RECURSIVE\s+VIEW))"
    r"|(?P<cursor>DECLARE\b[^;]*?\bCURSOR\b(?P<hold>[^;]*\bWITH\s+HOLD\b)?)"
    r")",
    re.I,
)
_ANYWHERE = re.compile(
    r"(?P<set_config>\bset_config\s*\((?P<set_config_args>[^;]*?)\))"
    r"|(?P<advisory>\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\()"
    r"|(?P<select_into>\bINTO\s+(?:TEMP|TEMPORARY)\b)",
    re.I,
)
_TRANSACTION_LOCAL = re.compile(r",\s*(?:true|'t(?:rue)?'|'on'|1)\s*$", re.I)
_QUICK = re.compile(r"set|reset|prepare|execute|deallocate|discard|listen|load|temp|cursor|advisory|into", re.I)
_DEALLOCATE_ALL = re.compile(r"\s*DEALLOCATE\s+(?:PREPARE\s+)?ALL\s*;?\s*", re.I)
_DROPS_ALL_STATEMENTS = re.compile(r"(?:^|;)\s*(?:DEALLOCATE\s+(?:PREPARE\s+)?ALL|DISCARD\s+ALL)\b", re.I)


def pin_reasons(sql: str, *, in_transaction: bool, size: int | None = None) -> list[str]:
    """The reasons ``sql`` must pin its session (empty if none).

    ``in_transaction``: the client is inside a transaction block, where a plain ``DECLARE``
    cursor lives only until commit. ``size``: the statement's length in bytes as sent (in the
    session's client_encoding); by default that of ``sql`` in UTF-8.
    """
    reasons = []
    if (len(sql.encode()) if size is None else size) > MAX_UNPINNED_STATEMENT:
        reasons.append("statement_over_16kb")
    if not _QUICK.search(sql):
        return reasons
    clean = _NOISE.sub(" ", sql)
    for match in _STATEMENT_START.finditer(clean):
        kind = match.lastgroup
        if match.group("temp"):
            reasons.append("temporary_" + match.group("temp_kind").split()[-1].lower())
        elif match.group("cursor"):
            if match.group("hold") or not in_transaction:
                reasons.append("cursor")
        elif kind:
            reasons.append(kind)
    for match in _ANYWHERE.finditer(clean):
        if match.group("set_config"):
            if not _TRANSACTION_LOCAL.search(match.group("set_config_args")):
                reasons.append("set_config")
        elif match.group("advisory"):
            reasons.append("advisory_lock")
        else:
            reasons.append("temporary_table")
    return list(dict.fromkeys(reasons))


def is_deallocate_all(sql: str) -> bool:
    """``sql`` is exactly ``DEALLOCATE ALL`` (what psycopg sends after a rollback)."""
    return _DEALLOCATE_ALL.fullmatch(sql) is not None


def drops_all_statements(sql: str) -> bool:
    """One of the statements in ``sql`` is ``DEALLOCATE ALL`` or ``DISCARD ALL`` (not text in
    a literal or comment): the server forgets every prepared statement of the session."""
    return bool(_QUICK.search(sql)) and _DROPS_ALL_STATEMENTS.search(_NOISE.sub(" ", sql)) is not None
