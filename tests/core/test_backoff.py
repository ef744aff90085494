"""The connect backoff (lambdapool/_retry.py): blips briefly, refusals for capacity on a longer,
decorrelated, deadline-aware scale. Pure arithmetic: no server."""

from __future__ import annotations

import statistics

import pytest

from lambdapool._retry import BLIP_CAP, REFUSED_CAP, REFUSED_FIRST, Backoff, is_refusal


class Refused(Exception):
    sqlstate = "53300"


@pytest.mark.parametrize(
    "text",
    [
        "FATAL: sorry, too many clients already",
        "FATAL: remaining connection slots are reserved for non-replication superuser connections",
        "Timed-out waiting to acquire database connection",
        "The maximum number of client connections to the proxy exceeded",
        "Rate of connection to proxy exceeded",
        "The IAM authentication failed because of too many competing requests",
    ],
)
def test_capacity_refusals_are_told_apart_from_blips(text):
    assert is_refusal(Exception(text))
    assert not is_refusal(ConnectionRefusedError("[Errno 111] Connection refused"))


def test_a_refusal_waits_longer_than_a_blip_and_grows_to_its_cap():
    blips = [Backoff(60).delay(ConnectionResetError("reset")) for _ in range(500)]
    assert max(blips) <= 0.05 and statistics.mean(blips) < 0.03  # the first retry of a blip: quick
    backoff = Backoff(600)
    refusals = [backoff.delay(Refused("too many clients")) for _ in range(30)]
    assert all(REFUSED_FIRST <= d <= REFUSED_CAP for d in refusals)
    assert statistics.mean(refusals[-10:]) > 3 * REFUSED_FIRST  # decorrelated growth toward the cap


def test_a_refusal_never_waits_more_than_a_third_of_the_budget():
    for budget in (1.2, 3.0, 12.0):
        backoff = Backoff(budget)
        assert all(backoff.delay(Refused()) <= budget / 3 for _ in range(50))


def test_a_recent_refusal_carries_its_level_into_the_next_connect():
    fresh = [Backoff(60).delay(Refused()) for _ in range(200)]
    carried = [Backoff(60, previous=8.0).delay(Refused()) for _ in range(200)]
    assert statistics.mean(carried) > statistics.mean(fresh) + 2


def test_blips_back_off_exponentially_to_their_cap():
    backoff = Backoff(60)
    delays = [backoff.delay(TimeoutError("timed out")) for _ in range(12)]
    assert all(d <= BLIP_CAP for d in delays)
