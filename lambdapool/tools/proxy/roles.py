"""Which servers a backend may be on: the proxy's role, libpq's ``target_session_attrs``, what a server reports.

No I/O. A server's role is read from what PostgreSQL 14+ reports at login and whenever it
changes (ParameterStatus, so it costs no round trip): ``in_hot_standby`` (a standby in
recovery) and ``default_transaction_read_only``. A server that reports neither (before 14) is
taken for a writer; one that then refuses a write with SQLSTATE 25006 is found by that.

The proxy's ``role`` is RDS Proxy's endpoint kind: ``"writer"`` (its default read/write
endpoint) wants ``read-write`` unless the backend DSN names another writer-like
``target_session_attrs``; ``"reader"`` (a read-only endpoint) wants ``standby``, or the DSN's
``read-only`` / ``prefer-standby``.
"""

from __future__ import annotations

from typing import Final

from lambdapool.errors import ConfigError

TARGET_SESSION_ATTRS: Final = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
ROLES: Final = ("writer", "reader")
_FOR_ROLE: Final = {
    "writer": ("any", "read-write", "primary"),
    "reader": ("any", "read-only", "standby", "prefer-standby"),
}
_DEFAULT: Final = {"writer": "read-write", "reader": "standby"}


def wanted_attrs(role: str, target_session_attrs: str | None) -> str:
    """The ``target_session_attrs`` the proxy's backends must meet in ``role``.

    Raises ConfigError when the DSN's ``target_session_attrs`` contradicts the role.
    """
    if role not in ROLES:
        raise ConfigError(f"role: must be 'writer' or 'reader', got {role!r}")
    if target_session_attrs is None:
        return _DEFAULT[role]
    if target_session_attrs not in _FOR_ROLE[role]:
        other = "reader" if role == "writer" else "writer"
        flag = "role='reader' (--reader)" if other == "reader" else "role='writer' (no --reader)"
        raise ConfigError(
            f"backend: target_session_attrs={target_session_attrs} asks for a {other}, but the proxy's role is "
            f"{role!r}: use {flag}, or drop target_session_attrs from the backend DSN"
        )
    return "any" if target_session_attrs == "any" else target_session_attrs


def is_standby(params: dict[str, str]) -> bool:
    return params.get("in_hot_standby") == "on"


def is_read_only(params: dict[str, str]) -> bool:
    return is_standby(params) or params.get("default_transaction_read_only") == "on"


def fits(wanted: str, params: dict[str, str]) -> bool:
    """Does a server that reported ``params`` meet ``wanted`` (``prefer-standby``: a standby)?"""
    if wanted == "any":
        return True
    if wanted == "read-write":
        return not is_read_only(params)
    if wanted == "read-only":
        return is_read_only(params)
    if wanted == "primary":
        return not is_standby(params)
    return is_standby(params)  # standby, prefer-standby


def keeps(wanted: str, params: dict[str, str]) -> bool:
    """May a pooled backend whose server now reports ``params`` go on being lent?
    ``prefer-standby`` keeps what it has: it took a writer only for want of a standby."""
    return wanted == "prefer-standby" or fits(wanted, params)


def reports_role(params: dict[str, str]) -> bool:
    """Does the server report its role (PostgreSQL 14+)? If not, a 25006 is the only sign of a demoted writer."""
    return "default_transaction_read_only" in params


def describe(params: dict[str, str]) -> str:
    """What the server is, in words, for errors and logs."""
    if is_standby(params):
        return "a hot standby (in_hot_standby=on)"
    if is_read_only(params):
        return "read-only (default_transaction_read_only=on)"
    return "a read-write server"


def wanted_words(wanted: str) -> str:
    return {
        "read-write": "a writer (read-write)",
        "primary": "a primary",
        "read-only": "a read-only server",
        "standby": "a hot standby",
        "prefer-standby": "a hot standby",
        "any": "a server",
    }[wanted]


def advertised(params: dict[str, str], wanted: str) -> dict[str, str]:
    """The parameters clients are told at login: the server's, with its role as the endpoint's.

    The first server the proxy reached may not be of its role (a writer endpoint started during
    a failover); its clients will only ever be lent backends of the role, so say that.
    """
    out = dict(params)
    if "in_hot_standby" in out:
        if wanted in ("read-write", "primary"):
            out["in_hot_standby"] = "off"
        elif wanted == "standby":
            out["in_hot_standby"] = "on"
    if wanted == "read-write" and "default_transaction_read_only" in out:
        out["default_transaction_read_only"] = "off"
    return out


class NoServerForRole(Exception):
    """No host of the backend DSN gave a backend of the wanted role (the message says what each was).

    ``transient``: worth retrying (a host was away, or, for a writer, a standby may be promoted);
    otherwise the borrow fails at once.
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient
