"""The fan-out picture: one panel per scenario, side by side, on the same scale.

Each panel shows what the functions asked for (invocations in flight, grey) against what the
database held (backends sampled from ``pg_stat_activity``, blue), the limit (red dashed), the
pooler's cap (green dotted) and every failed invocation (red ticks at the bottom, when it
ended); a scenario's ``extra["description"]``, when it has one, says under its name what it is.
So the direct burst is seen asking for more than the limit and being refused, and the pooled
one asking for as much and holding no more than the cap. matplotlib is imported here only,
through its object API with the Agg canvas (no pyplot, no screen, safe in CI).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.artist import Artist

    from lambdapool.tools.emulator import Report, Scenario


def in_flight(scenario: Scenario, t0: float) -> list[tuple[float, int]]:
    """Invocations running at each instant (throttled ones never ran), as step points."""
    changes = sorted(
        [(r.started_at - t0, 1) for r in scenario.results if not r.throttled]
        + [(r.ended_at - t0, -1) for r in scenario.results if not r.throttled]
    )
    points, running = [(0.0, 0)], 0
    for t, delta in changes:
        running += delta
        points.append((t, running))
    return points


def _start(scenario: Scenario) -> float:
    return min([t for t, _ in scenario.timeline[:1]] + [r.started_at for r in scenario.results], default=0.0)


def draw_comparison(report: Report, path: str | Path) -> Path:
    """Write the PNG; returns its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    scenarios = report.scenarios
    count = max(1, len(scenarios))
    fig = Figure(figsize=(max(6.5, 5.0 * count), 5.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, count, sharex=True, sharey=True, squeeze=False)[0]
    flights = [in_flight(s, _start(s)) for s in scenarios]
    top = max(
        [
            1,
            *(s.limit or 0 for s in scenarios),
            *(n for f in flights for _, n in f),
            *(n for s in scenarios for _, n in s.timeline),
        ]
    )
    for ax, scenario, flight in zip(axes, scenarios, flights):
        t0 = _start(scenario)
        xs, ys = zip(*flight)
        ax.fill_between(xs, ys, step="post", color="0.85", label="invocations in flight")
        if scenario.timeline:
            bx, by = zip(*((t - t0, n) for t, n in scenario.timeline))
            ax.step(bx, by, where="post", color="tab:blue", linewidth=2.2, label="database backends")
        if scenario.limit is not None:
            ax.axhline(
                scenario.limit,
                color="red",
                linestyle="--",
                linewidth=1.4,
                label="limit (connections the functions can have)",
            )
        cap = scenario.extra.get("cap")
        if cap:
            ax.axhline(cap, color="green", linestyle=":", linewidth=1.8, label="pooler cap")
        failed = [r.ended_at - t0 for r in scenario.results if not r.ok]
        if failed:
            ax.plot(
                failed,
                [top * 0.02] * len(failed),
                "|",
                color="red",
                markersize=14,
                markeredgewidth=1.5,
                label="a failed invocation",
            )
        summary = scenario.summary()
        verdict = f"{summary['failures']} of {summary['invocations']} failed"
        peak = f"peak {summary['peak_backends']} backends" + (f" (cap {cap})" if cap else "")
        what = scenario.extra.get("description")  # what the run is, when the caller says (the demo does)
        heading = "\n".join([scenario.name, *([what] if what else []), f"{verdict}, {peak}"])
        ax.set_title(heading, color="firebrick" if failed else "darkgreen", fontsize=11)
        ax.set_xlabel("seconds since the burst started")
        ax.grid(True, alpha=0.3)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, top * 1.12)
    # Shared x: one explicit range covering every run (a per-panel set_xlim would freeze the
    # shared range at the first panel's data).
    end = max([0.0, *(t for f in flights for t, _ in f), *(t - _start(s) for s in scenarios for t, _ in s.timeline)])
    axes[0].set_xlim(0, end * 1.02 or 1.0)
    axes[0].set_ylabel("connections")
    handles: dict[str, Artist] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    limit = next((s.limit for s in scenarios if s.limit is not None), None)
    width = fig.get_figwidth()
    title = textwrap.wrap(report.title + (f" \u2014 limit {limit}" if limit is not None else ""), int(width * 10))
    fig.suptitle("\n".join(title), fontsize=12)
    fig.legend(
        list(handles.values()), list(handles), loc="lower center", ncol=min(5, len(handles)), fontsize=9, frameon=False
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1 - 0.04 * (len(title) - 1)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
