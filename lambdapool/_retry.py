"""How long to wait between connect attempts, and the error text of each.

Theory of operation
-------------------
Two kinds of transient failure call for two scales (the AWS Builders' Library, "Timeouts,
retries, and backoff with jitter": back off, cap it, and jitter it):

* a **blip** (connection refused or reset, a timeout, the server starting up) is over in
  milliseconds or it is not: full-jitter exponential backoff from 50 ms, capped at 1 s;
* a **refusal for capacity** ("too many clients", reserved slots, a pooler's borrow timeout,
  RDS Proxy's client cap and connection rate) means every slot is taken, and every instance of
  a burst is told the same at the same moment. Each refused attempt also costs the server a
  forked backend before it says no, so a thousand waiters retrying every second keep it busy
  refusing instead of serving. These back off with *decorrelated* jitter (AWS Architecture
  Blog, "Exponential Backoff And Jitter": ``min(cap, uniform(base, previous * 3))``), from
  1 s up to 10 s, and never more than a third of the connect's budget, so an
  invocation still gets several tries in its budget and the fleet's retries spread out
  rather than arriving in waves. Measured (tests/fanout, 1,100 instances against 26 slots on
  two cores, two runs each): 4,622-4,668 refused attempts instead of 16,914-33,164, and every
  one of 2,200 invocations served instead of 694-1,273. (A short deadline keeps its share: a 3 s Lambda still gets
  several attempts.)

Not chosen: botocore's retry quota and gRPC's retry throttling are token buckets kept per
client, and Envoy's retry budget a share of one proxy's active requests. They bound how much
one client retries; here each process holds one connection and tries for it alone, so a local
budget sees one attempt at a time and bounds nothing. The server's load comes from the
fleet, and what spreads a fleet's attempts is each member waiting longer, at random, once
refused.
"""

from __future__ import annotations

import contextvars
import random
import re

from lambdapool._scrub import message_of

BLIP_FIRST, BLIP_CAP = 0.05, 1.0  # seconds
REFUSED_FIRST, REFUSED_CAP = 1.0, 10.0
REFUSED_SHARE_OF_BUDGET = 1 / 3
# The time.monotonic() deadline of the connect in progress, for what runs inside it (an
# adapter's endpoint lookup, which must stop in time too).
CONNECT_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("lambdapool_connect", default=None)
REFUSED_MEMORY = 20.0  # seconds a refusal's backoff level carries over to the next connect

# Full: the server's or the pooler's capacity, not the network. SQLSTATE 53300 is
# too_many_connections; RDS Proxy's own texts are on its troubleshooting page.
_REFUSED_SQLSTATES = {"53300"}
_REFUSED = re.compile(
    r"too many clients|too many connections|remaining connection slots are reserved|"
    r"borrow|timed-out waiting to acquire|maximum number of client connections|"
    r"rate of connection to proxy exceeded|too many competing requests",
    re.I,
)


def is_refusal(exc: BaseException) -> bool:
    """Was the connect turned away because the server or pooler is full?"""
    return getattr(exc, "sqlstate", None) in _REFUSED_SQLSTATES or bool(_REFUSED.search(str(exc)))


class Backoff:
    """The delays between the attempts of one connect (one per acquire).

    ``budget``: the seconds this connect may take in all. ``previous``: the last refusal delay
    of the instance's previous connect, if that was refused lately: a burst comes in waves (a
    cold wave, then the warm one), and an instance that was just refused starts where it left
    off instead of joining the next wave's first, tightest round of retries.
    """

    __slots__ = ("attempt", "cap", "previous")

    def __init__(self, budget: float, previous: float = REFUSED_FIRST) -> None:
        self.attempt = 0
        # A share of the whole budget, not of what is left: a cap shrinking with the time left
        # would crowd every instance's last attempts into the moments before their common
        # deadline (a burst's instances start together).
        self.cap = min(REFUSED_CAP, budget * REFUSED_SHARE_OF_BUDGET)
        self.previous = min(previous, self.cap)

    def delay(self, exc: BaseException) -> float:
        """Seconds to wait after ``exc``; the caller stops if that reaches past the deadline."""
        self.attempt += 1
        if not is_refusal(exc):
            return random.uniform(0, min(BLIP_CAP, BLIP_FIRST * 2 ** (self.attempt - 1)))
        cap = self.cap
        self.previous = min(cap, random.uniform(min(REFUSED_FIRST, cap), max(self.previous, REFUSED_FIRST) * 3))
        return self.previous


def describe_error(exc: BaseException, secrets: tuple[str | None, ...]) -> str:
    """``Type: message`` on one line, with any secret we know of blotted out."""
    return f"{type(exc).__name__}: {message_of(exc, secrets)}"
