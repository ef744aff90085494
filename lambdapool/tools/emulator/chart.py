"""The picture of a fan-out: database backends over time, per scenario, against the limit.

matplotlib is imported here only, and drawn through its object API with the Agg canvas:
no pyplot, no global backend switch, nothing shown on a screen, safe in threads and CI.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lambdapool.tools.emulator.report import Report


def draw_backends(report: Report, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lambdapool.tools.emulator.report import _relative

    fig = Figure(figsize=(9, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    limits: set[int] = set()
    for scenario in report.scenarios:
        points = _relative(scenario)
        if points:
            xs, ys = zip(*points)
            peak = max(ys)
            failed = sum(not r.ok for r in scenario.results)
            label = f"{scenario.name}: peak {peak}, {failed} of {len(scenario.results)} failed"
            summary = scenario.summary()
            if summary["processes"] != summary["instances"]:  # Managed Instances: say both
                label += f" ({summary['instances']} environments, {summary['processes']} processes)"
            ax.step(xs, ys, where="post", linewidth=1.6, label=label)
        if scenario.limit is not None:
            limits.add(scenario.limit)
    for limit in sorted(limits):
        ax.axhline(limit, color="red", linestyle="--", linewidth=1.2, label=f"limit ({limit})")
    ax.set_title(report.title)
    ax.set_xlabel("seconds since the burst started")
    ax.set_ylabel("database backends (pg_stat_activity)")
    ax.set_ylim(0, max([*limits, *(n for s in report.scenarios for _, n in s.timeline)], default=1) * 1.15)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
