"""What a run showed, per scenario (direct, through a pooler, ...): a table, JSON and a chart.

A scenario is a fleet's invocation results plus, optionally, a :class:`BackendSampler`'s
timeline and the database's limit. Percentiles are nearest-rank over the invocations that
reached an instance, cold and warm apart (a cold one carries its instance's init).
``instances`` counts instances (Lambda: execution environments), ``processes`` the runtime
processes that served invocations (the same number, except on Lambda Managed Instances,
where each environment runs ``max_concurrency`` worker processes, each with its own connections).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lambdapool.tools.emulator.failures import distinct_errors
from lambdapool.tools.emulator.results import InvocationResult, percentile
from lambdapool.tools.emulator.sampler import Sampler


@dataclass
class Scenario:
    name: str
    results: Sequence[InvocationResult]
    timeline: Sequence[tuple[float, int]] = ()
    limit: int | None = None
    sample_hz: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        results = self.results
        served = [r for r in results if not r.throttled]
        cold = [r.latency_ms for r in served if r.cold]
        warm = [r.latency_ms for r in served if not r.cold]
        peak = max((count for _, count in self.timeline), default=None)
        starts = [r.started_at for r in results] + [t for t, _ in self.timeline[:1]]
        ends = [r.ended_at for r in results] + [t for t, _ in self.timeline[-1:]]
        duration = (max(ends) - min(starts)) if starts and ends else 0.0
        out: dict[str, Any] = {
            "invocations": len(results),
            "ok": sum(r.ok for r in results),
            "failures": sum(not r.ok and not r.throttled for r in results),
            "throttles": sum(r.throttled for r in results),
            "cold_starts": sum(r.cold for r in results),
            "instances": len({r.instance_id for r in served if r.instance_id}),  # Lambda: environments
            # runtime processes that served: more than instances on Lambda Managed Instances
            "processes": len({r.process_id or r.instance_id for r in served if r.instance_id}),
            "peak_backends": peak,
            "limit": self.limit,
            # A database never holds more than its limit: it refuses instead (see failures).
            "peak_pct_of_limit": round(100 * peak / self.limit) if peak is not None and self.limit else None,
            "samples": len(self.timeline),
            "sample_hz": round(self.sample_hz, 1) if self.sample_hz is not None else None,
            "duration_s": round(duration, 3),
            "invocations_per_s": round(len(results) / duration, 1) if duration > 0 else None,
        }
        for label, values in (("cold", cold), ("warm", warm)):
            for pct in (50, 95, 99):
                value = percentile(values, pct)
                out[f"{label}_p{pct}_ms"] = round(value, 2) if value is not None else None
        out["errors"] = _error_counts(results)
        out.update(self.extra)
        return out


def _error_counts(results: Sequence[InvocationResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        if not r.ok and r.error_type:
            counts[r.error_type] = counts.get(r.error_type, 0) + 1
    return counts


class Report:
    """Scenarios side by side: ``Report().add("direct", results, sampler, limit=30)``."""

    def __init__(self, title: str = "lambdapool fan-out") -> None:
        self.title = title
        self.scenarios: list[Scenario] = []

    def add(
        self,
        name: str,
        results: Sequence[InvocationResult],
        sampler: Sampler | None = None,
        *,
        limit: int | None = None,
        **extra: Any,
    ) -> Scenario:
        """Add a scenario; ``extra`` adds rows of its own (``reconnects=3``, ``pinned=0``)."""
        scenario = Scenario(
            name,
            list(results),
            list(sampler.timeline) if sampler else [],
            limit,
            sampler.rate_hz if sampler else None,
            dict(extra),
        )
        self.scenarios.append(scenario)
        return scenario

    def summary(self) -> dict[str, dict[str, Any]]:
        return {s.name: s.summary() for s in self.scenarios}

    def table(self) -> str:
        """The summary as a text table, one column per scenario."""
        summaries = self.summary()
        names = list(summaries)
        keys: list[str] = []
        for summary in summaries.values():
            keys += [k for k in summary if k not in keys]
        rows = [["", *names]]
        for key in keys:
            rows.append([key, *(_cell(summaries[n].get(key)) for n in names)])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [self.title]
        for i, row in enumerate(rows):
            lines.append(
                "  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths)))
            )
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_json(self) -> str:
        """Summaries, errors (each distinct one with its message, traceback and count: see
        :mod:`.failures`) and timelines (``[seconds since the scenario's start, backends]``)."""
        doc = {
            "title": self.title,
            "scenarios": {
                s.name: {
                    "summary": s.summary(),
                    "errors": [e.to_dict() for e in distinct_errors({s.name: s.results})],
                    "timeline": [[round(t, 3), n] for t, n in _relative(s)],
                }
                for s in self.scenarios
            },
        }
        return json.dumps(doc, indent=2)

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path

    def chart(self, path: str | Path) -> Path:
        """Draw backends over time, one series per scenario, against the limit; write a PNG."""
        from lambdapool.tools.emulator.chart import draw_backends

        return draw_backends(self, Path(path))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "YES" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _relative(scenario: Scenario) -> list[tuple[float, int]]:
    """The timeline in seconds since the scenario's first event (sample or invocation)."""
    if not scenario.timeline:
        return []
    t0 = min([scenario.timeline[0][0], *(r.started_at for r in scenario.results)])
    return [(t - t0, n) for t, n in scenario.timeline]
