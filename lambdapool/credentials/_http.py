"""A local credentials endpoint, asked with the standard library: one GET, retried briefly.

Both credential endpoints a function may ask at a cold start are on the instance's own network
(AWS's container endpoint, Google's metadata server): they answer in milliseconds or not at
all, so a short timeout and two quick retries, not an SDK's seconds of backoff.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

TIMEOUT = 2.0  # seconds per attempt, as botocore and google-auth
ATTEMPTS = 3
PAUSES = (0.1, 0.5)  # between attempts; botocore sleeps 1 s, long for a cold start


def get(url: str, headers: dict[str, str], timeout: float = TIMEOUT) -> tuple[int, bytes]:
    """One GET: the status and the body. OSError/ValueError when there is no answer."""
    import http.client  # psycopg and asyncpg have it loaded already; only this path needs it

    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname or "", parts.port, timeout=timeout)
    try:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get_retried(url: str, headers: dict[str, str], *, final: frozenset[int] = frozenset()) -> tuple[int, bytes]:
    """GET up to ATTEMPTS times: until a 200 or a status in ``final`` (a refusal that retrying
    cannot mend). Returns the last answer; raises the last OSError/ValueError if none came."""
    for attempt in range(ATTEMPTS):
        last = attempt + 1 == ATTEMPTS
        try:
            status, body = get(url, headers)
        except (OSError, ValueError):  # refused, timed out, unresolvable, bad URL
            if last:
                raise
        else:
            if status == 200 or status in final or last:
                return status, body
        time.sleep(PAUSES[attempt])
    raise AssertionError("unreachable")  # pragma: no cover
