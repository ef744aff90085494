"""The promise on every path (issue 19): whatever happened to the warm connection before, every
invocation starts outside a transaction with the user's own settings, its work is atomic and runs
once, the instance holds no more connections than it may, no exception but the handler's own
escapes, and ``db.stats()`` agrees with what happened.

A hypothesis state machine (tests/invariants/machine.py) drives one ``lambdapool.Database``
through random sequences of invocations (writes that succeed or raise, transactions left open,
session state, the user's connection settings, probes), ``connection()`` blocks outside any
invocation, and faults between them (backends killed, the server restarted, its
idle_session_timeout firing during a freeze, idle past ``ping_after_idle``, older than
``max_lifetime``, the server demoted to read-only under the warm connection, the local proxy
dropping its clients or killing its backends, PgBouncer restarted), for each driver and pooler;
each example draws ``reset_session``, a ``configure`` hook and short or long
``ping_after_idle`` / ``max_lifetime``. The invariants are checked after
every step. On a failure hypothesis prints the shortest sequence of steps it found.

The suite runs a fixed, derandomized budget: about ``CI_STEPS`` steps per driver x pooler (~110 s
for all nine on a 2-core VM). A soak on demand runs fresh random sequences until each driver x
pooler has made at least that many steps (no time limit then; ``-s`` prints the counts)::

    LAMBDAPOOL_SOAK_STEPS=3000 python3 -m pytest tests/invariants -q -s
"""

from __future__ import annotations

import math
import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.invariants.machine import InstanceMachine
from tests.support import DRIVERS

CI_STEPS = 300
STEPS_PER_EXAMPLE = 30
SOAK_STEPS = int(os.environ.get("LAMBDAPOOL_SOAK_STEPS") or 0)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(0 if SOAK_STEPS else 600)]


def machine_settings(steps: int) -> settings:
    return settings(
        max_examples=math.ceil(steps / STEPS_PER_EXAMPLE),
        stateful_step_count=STEPS_PER_EXAMPLE,
        derandomize=not SOAK_STEPS,  # CI: the same sequences every run; a soak: new ones
        database=None,  # nothing replayed from an earlier run's failures: CI stays deterministic
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


@pytest.mark.parametrize("pooler", ["direct", "local", "pgbouncer"])
@pytest.mark.parametrize("driver", DRIVERS)
def test_every_invocation_keeps_the_promise(driver, pooler, request):
    target = request.getfixturevalue(f"{pooler}_target")
    counted: Counter[str] = Counter()
    wanted = SOAK_STEPS or CI_STEPS
    while counted["steps"] < wanted:  # (hypothesis ends some examples early: a soak goes round again)
        budget = machine_settings(wanted - counted["steps"])
        run_state_machine_as_test(lambda: InstanceMachine(driver, target, counted), settings=budget)
        if not SOAK_STEPS:
            break
    steps, examples, demotions = counted["steps"], counted["examples"], counted["demotions"]
    print(f"{driver} x {pooler}: {steps} steps in {examples} examples, {demotions} demotions")
