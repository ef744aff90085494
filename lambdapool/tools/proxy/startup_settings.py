"""A client's startup parameters: which follow it from backend to backend, and the SQL that applies them.

``application_name``, ``TimeZone``, ``-c`` options... are session state the client set at
login, before any backend was lent. They are kept per client and applied with ``SET`` on each
backend whose applied settings differ, before the client's own messages (``session.py``).
"""

from __future__ import annotations

import re
import shlex

from lambdapool.tools.proto.encodings import canonical_name

_NOT_SETTINGS = frozenset(("user", "database", "replication", "options"))
_PLAIN_IDENT = re.compile(r"[a-z_][a-z0-9_.]*")


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    return name if _PLAIN_IDENT.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def wanted_settings(params: dict[str, str], baseline_lower: dict[str, str]) -> dict[str, str]:
    """The settings a startup packet asks for (``-c`` options included) that differ from the server's."""
    wanted = {k.lower(): v for k, v in params.items() if k not in _NOT_SETTINGS}
    words = shlex.split(params.get("options", "").replace("\\ ", "\0"))
    for i, word in enumerate(words):
        word = word.replace("\0", " ")
        option = (
            word[2:]
            if word.startswith("-c") and len(word) > 2
            else (words[i + 1] if word == "-c" and i + 1 < len(words) else "")
        )
        if option.startswith("--"):
            option = option[2:]
        key, sep, value = option.replace("\0", " ").partition("=")
        if sep:
            wanted[key.replace("-", "_").lower()] = value
    if "client_encoding" in wanted:
        # the server's own spelling ('utf-8' -> 'UTF8'): what it would report, and no SET
        # on each backend when it is the default anyway
        wanted["client_encoding"] = canonical_name(wanted["client_encoding"]) or wanted["client_encoding"]
    return {k: v for k, v in wanted.items() if baseline_lower.get(k) != v}


def apply_sql(applied: dict[str, str], wanted: dict[str, str]) -> str:
    """The statements that turn a backend's ``applied`` settings into ``wanted``."""
    sql = [f"RESET {quote_ident(k)}" for k in applied if k not in wanted]
    sql += [f"SET {quote_ident(k)} = {quote_literal(v)}" for k, v in wanted.items() if applied.get(k) != v]
    return "; ".join(sql)
