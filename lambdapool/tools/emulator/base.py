"""What every fleet shares: the ledger of results, the context manager, a burst on threads."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from lambdapool.tools.emulator.results import InvocationResult, Ledger

F = TypeVar("F", bound="Fleet")


class Fleet:
    """Base of :class:`LambdaFleet`, :class:`CloudFunctionFleet` and :class:`LightFleet`."""

    def __init__(self) -> None:
        self.ledger = Ledger()

    def start(self: F) -> F:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def invoke(self, event: Any = None) -> InvocationResult:
        raise NotImplementedError

    def __enter__(self: F) -> F:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def results(self) -> list[InvocationResult]:
        """Every invocation's result so far, in the order they ended."""
        return self.ledger.results

    @property
    def counters(self) -> dict[str, int]:
        """invocations, cold_starts, throttles, errors, instances_started, reaped, peak_instances."""
        return self.ledger.counters

    def burst(self, events: Iterable[Any], concurrency: int = 10) -> list[InvocationResult]:
        """Invoke once per event, ``concurrency`` at a time; results in the order of ``events``."""
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(self.invoke, list(events)))
