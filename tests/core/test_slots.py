"""The bounded set of connections one instance lends to concurrent requests."""

from __future__ import annotations

import threading
import time

import pytest

import lambdapool
from lambdapool._slots import Slots


def test_waits_for_a_slot_then_gets_the_one_given_back():
    slots = Slots(1, object)
    first = slots.take(1)
    threading.Timer(0.1, slots.give, args=(first,)).start()
    assert slots.take(2) is first  # waited, then reused: never a second one
    assert len(slots.all) == 1


def test_exhausted_slots_raise_connection_unavailable_naming_the_setting():
    slots = Slots(2, object)
    slots.take(1), slots.take(1)
    started = time.monotonic()
    with pytest.raises(lambdapool.ConnectionUnavailable, match="max_per_instance=2"):
        slots.take(0.2)
    assert time.monotonic() - started >= 0.2


def test_most_recently_used_slot_is_lent_first():
    slots = Slots(3, object)
    a, b = slots.take(1), slots.take(1)
    slots.give(a)
    slots.give(b)
    assert slots.take(1) is b  # the warmest connection


def test_async_slots_hand_a_given_back_slot_to_the_first_waiter():
    import asyncio

    from lambdapool._slots import AsyncSlots

    async def scenario():
        slots = AsyncSlots(1, object)
        first = await slots.take(1)
        waiters = [asyncio.ensure_future(slots.take(2)) for _ in range(2)]
        await asyncio.sleep(0)
        slots.give(first)
        got = await waiters[0]
        slots.give(got)
        assert await waiters[1] is first and len(slots.all) == 1
        with pytest.raises(lambdapool.ConnectionUnavailable, match="max_per_instance=1"):
            await slots.take(0.05)

    asyncio.run(scenario())


def test_slots_given_back_without_the_lock_never_lose_a_waiter():
    # GIVEN two slots shared by eight threads, which take them from the idle list without the
    # lock (as the warm path does) or wait for one, and give them back without the lock
    slots = Slots(2, object)
    served, errors = [], []

    def request(n: int) -> None:
        for _ in range(n):
            try:
                holder = slots.idle.pop()
            except IndexError:
                holder = slots.take_idle() or slots.take(5.0)
            try:
                served.append(holder)
                time.sleep(0)  # let another thread in while the slot is lent
            finally:
                slots.give(holder)

    def guarded(n: int) -> None:
        try:
            request(n)
        except Exception as exc:  # a lost wake-up shows as a wait that runs out
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(500,)) for _ in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # THEN every request was served, by one of the two slots, and none waited out its 5 s
    assert errors == [] and len(served) == 4000
    assert len(slots.all) == 2 and len(set(map(id, served))) == 2
    assert sorted(map(id, slots.idle)) == sorted(map(id, slots.all)) and slots.waiting == 0
    assert time.monotonic() - started < 5.0
