"""lambdapool.tools.waiting.arrive_and_wait: the barrier the Managed Instances handlers meet at."""

from __future__ import annotations

import os
import threading

from lambdapool.tools.waiting import arrive_and_wait


def test_the_barrier_opens_when_every_party_has_arrived(tmp_path):
    arrived: list[bool] = []
    late = threading.Thread(target=lambda: arrived.append(arrive_and_wait(str(tmp_path), "b", 2, timeout=30)))
    late.start()
    assert arrive_and_wait(str(tmp_path), "a", 2, timeout=30) is True
    late.join()
    assert arrived == [True] and sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_a_party_alone_goes_on_after_the_timeout_and_says_so(tmp_path):
    assert arrive_and_wait(str(tmp_path), "alone", 2, timeout=0.05) is False
    assert os.listdir(tmp_path) == ["alone"]
