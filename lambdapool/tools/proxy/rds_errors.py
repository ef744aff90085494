"""RDS Proxy's own refusals, as the local proxy sends them where it emulates the condition.

The texts are RDS Proxy's, from its troubleshooting page ("Troubleshooting RDS Proxy issues
with RDS for PostgreSQL"); the proxy follows each with its own detail in parentheses, so a
client (or the SDK's classification, drivers/base.py) can match on RDS Proxy's words.

AWS documents no SQLSTATEs for them. Ours are the closest Postgres ones:

* the pool, the client cap: 53300 too_many_connections, what Postgres says when it is full;
* the connection rate: 53400 configuration_limit_exceeded (a configured limit, not a count of
  connections);
* the two IAM ones: 28000 invalid_authorization_specification, what Postgres uses for a login
  refused before any password is checked (pg_hba's "no encryption"). For the competing-requests
  one this is deliberately pessimistic: the text reads as an authentication failure and a
  real proxy may well send a 28xxx code, yet it is transient, so clients must go by the text.

All are FATAL (the login ends) except a borrow timeout after login (an ERROR on the statement
that waited; the connection stays usable).
"""

from __future__ import annotations

PROXY = "lambdapool local proxy"  # who adds the detail in parentheses

BORROW_TIMEOUT = "53300", "Timed-out waiting to acquire database connection."
CLIENT_CAP = "53300", "The maximum number of client connections to the proxy exceeded {limit}."
CONNECTION_RATE = "53400", "Rate of connection to proxy exceeded {rate}."
IAM_COMPETING = "28000", "The IAM authentication failed because of too many competing requests."
IAM_NEEDS_TLS = "28000", "IAM is allowed only with SSL connections."
REQUIRES_TLS = "28000", "This RDS Proxy requires TLS connections."


def borrow_timeout_message(timeout: float, cap: int, why: str | None = None) -> str:
    """RDS Proxy's borrow timeout text, with the proxy's detail (ERROR after login, FATAL during one).

    ``why``: the pool could not open a backend (the database away, no writer during a failover),
    said instead of "all backends busy".
    """
    detail = f"timed out after {float(timeout)}s waiting to borrow a database connection"
    cause = f"all {cap} backends busy; raise max_backends or borrow_timeout"
    if why:
        cause = f"no backend could be opened: {why}"
    return f"{BORROW_TIMEOUT[1]} ({PROXY}: {detail} ({cause}))"


class ConnectionRate:
    """A token bucket of client logins: ``rate`` a second, bursts of up to ``max(1, rate)``.

    Refused logins take no token (a client told to back off does not make the wait longer).
    """

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
