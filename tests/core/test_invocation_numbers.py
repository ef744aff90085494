"""Invocations are numbered without a lock: exact under threads, one cold start per instance."""

from __future__ import annotations

import threading

from lambdapool._runtime import Instance, InvocationState


def test_numbers_are_unique_and_the_cold_start_is_one_across_threads():
    # GIVEN one instance whose invocations begin on eight threads at once (Cloud Functions)
    instance = Instance(default_timeout=3.0)
    states: list[InvocationState] = []
    go = threading.Barrier(8)

    def serve() -> None:
        go.wait()
        for _ in range(1000):
            states.append(InvocationState(instance, None))

    threads = [threading.Thread(target=serve) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # THEN the numbers are 1..8000 exactly once, and only number 1 was cold
    assert sorted(s.number for s in states) == list(range(1, 8001))
    assert [s.number for s in states if s.cold_start] == [1]
    assert instance.invocations == 8000 and instance.cold_starts == 1


def test_an_adhoc_block_is_not_an_invocation_and_a_restore_makes_the_next_one_cold():
    instance = Instance(default_timeout=3.0)
    InvocationState(instance, None, counted=False)
    first = InvocationState(instance, None)
    assert (first.number, first.cold_start, instance.invocations) == (1, True, 1)
    assert not InvocationState(instance, None).cold_start
    instance.restored()  # SnapStart: the next invocation is this environment's first
    after = InvocationState(instance, None)
    assert (after.number, after.cold_start, instance.cold_starts) == (3, True, 2)
    assert after.idle_gap is None and after.view().init_type == "snap-start"


def test_the_deadline_comes_from_the_lambda_context_when_asked():
    class Context:
        aws_request_id = "req-1"

        def get_remaining_time_in_millis(self) -> int:
            return 1500

    instance = Instance(default_timeout=30.0)
    lambda_state, plain = InvocationState(instance, Context()), InvocationState(instance, None)
    assert 1.4 < lambda_state.deadline - lambda_state.started <= 1.5 + 0.1
    assert plain.deadline == plain.started + 30.0
    view = lambda_state.view()
    assert view.request_id == "req-1" and view.number == 1 and 1.0 < view.remaining_time <= 1.5
