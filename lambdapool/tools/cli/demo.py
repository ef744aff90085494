"""`lambdapool demo`: the fan-out problem and its fix, on this machine, in under a minute.

No arguments and no running database: a throwaway Postgres with ``max_connections=20`` (the
bundled demo handler connects as an ordinary role, as an application would), and the same
burst of Lambda invocations three times:

* direct, with lambdapool's budget guard off: what a hand-written handler does (a module-level
  connection per environment, kept open): the database runs out of connections and refuses
  the rest ("sorry, too many clients already");
* direct, with lambdapool's defaults: the budget guard gives connections back while the
  database is nearly full and refused connects back off, so nothing fails, at the cost of
  reconnects and a slower tail;
* through the local proxy capped at 10: the same demand, no failure, the database never above
  the cap; invocations queue for a backend behind the cap, which is why their warm latency is
  higher.

It prints the runs side by side, says what each is, and draws them (``./lambdapool-demo.png``,
or ``--out DIR``).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

HELP = "see the fan-out problem and the pooled fix side by side (needs only Postgres binaries)"
CHART = "lambdapool-demo.png"
SLEEP = 0.05  # seconds each invocation holds its connection, so that invocations overlap
GIVE_UP = 2  # seconds a hand-written handler's refused connect is retried (LAMBDAPOOL_ACQUIRE_TIMEOUT)

# The runs, by name (describe() says what each is)
NO_GUARD = "direct (no guard)"
DEFAULTS = "direct (defaults)"
PROXIED = "local proxy"


def describe(cap: int) -> dict[str, tuple[str, str]]:
    return {
        NO_GUARD: (
            "each environment connects straight to Postgres and keeps its connection, as a hand-written "
            "handler does (a module-level psycopg.connect()): lambdapool with its budget guard off "
            f"(LAMBDAPOOL_BUDGET_GUARD=false), a refused connect given up after {GIVE_UP} s",
            "what a hand-written handler does",
        ),
        DEFAULTS: (
            "the same, with lambdapool's defaults: the budget guard gives a connection back at the end of an "
            "invocation while the database is nearly full, and a refused connect backs off and retries",
            "lambdapool's defaults (budget guard on)",
        ),
        PROXIED: (
            f"through the bundled local proxy, which behaves like RDS Proxy, capped at {cap} backends",
            f"capped at {cap}: invocations queue behind the cap",
        ),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help=f"where to write {CHART} (default: the current directory)",
    )
    parser.add_argument("--max-connections", type=int, default=20, help="the database's max_connections (default 20)")
    parser.add_argument("--concurrency", type=int, default=40, help="Lambda environments in the burst (default 40)")
    parser.add_argument("--invocations", type=int, default=200, help="invocations in the burst (default 200)")
    parser.add_argument("--cap", type=int, help="the local proxy's cap (default: half of max_connections)")


def verdict(scenario: Any) -> str:
    s = scenario.summary()
    peak = f"peak {s['peak_backends']} backends of the {s['limit']} the database allows"
    if s["failures"]:
        late = f", {s['timed_out']} timed out connecting" if s.get("timed_out") else ""
        return (
            f"{scenario.name}: {s['failures']} of {s['invocations']} invocations failed "
            f"({s.get('refused', 0)} refused: too many clients{late}), {peak}"
        )
    cap = f" (cap {s['cap']})" if s.get("cap") else ""
    # The guard's price: connections given back and opened again.
    churn = (
        f"; {s['connects']} connects for {s['instances']} environments"
        if (s.get("connects") or 0) > (s.get("instances") or 0)
        else ""
    )
    return f"{scenario.name}: all {s['invocations']} invocations succeeded, {peak}{cap}{churn}"


def queueing(report: Any, concurrency: int, cap: int) -> str:
    """Why the proxied run's warm latency is higher: its invocations wait their turn for a backend."""
    summaries = report.summary()
    proxied, direct = summaries[PROXIED]["warm_p50_ms"], summaries[NO_GUARD]["warm_p50_ms"]
    shown = f" ({proxied:.0f} ms, against {direct:.0f} ms direct)" if proxied and direct else ""
    held = SLEEP * 1000
    return (
        f"Why the proxy's warm p50 is higher{shown}: up to {concurrency} invocations in flight take turns on "
        f"its {cap} backends, each holding one for {held:.0f} ms, so an invocation queues for a free backend, "
        f"about {concurrency} / {cap} x {held:.0f} ms = {concurrency / cap * held:.0f} ms at the burst's height. "
        f"That wait is the price of never holding more than {cap} backends."
    )


def run(args: argparse.Namespace) -> int:
    from lambdapool.tools.cli.emulate import ProgressLine, summary_table, write_outputs
    from lambdapool.tools.emulator import Report, fanout

    fanout.require("matplotlib", extra="demo")
    cap = args.cap if args.cap is not None else max(1, args.max_connections // 2)
    # Connects keep the SDK's default budget (within the 10 s invocation), except where a
    # hand-written handler gives up: a cold connect in the burst may queue behind the others
    # (through the proxy, one in 26 runs ran past 2 s on a 2-vCPU VM).
    burst = fanout.Burst(args.invocations, args.concurrency, timeout=10.0, event={"sleep": SLEEP}).validate()
    runs: list[tuple[str, str, dict[str, Any]]] = [
        (NO_GUARD, "direct", {"budget_guard": False, "env": {"LAMBDAPOOL_ACQUIRE_TIMEOUT": str(GIVE_UP)}}),
        (DEFAULTS, "direct", {}),
        (PROXIED, "local", {"cap": cap}),
    ]
    what = describe(cap)
    progress = ProgressLine()
    with fanout.embedded_database(args.max_connections) as target, fanout.demo_handler() as handler:
        report = Report(
            f"{burst.invocations} invocations over {burst.concurrency} Lambda environments, "
            f"Postgres max_connections={args.max_connections}"
        )
        print(
            f"lambdapool demo: {report.title}; a throwaway Postgres, the bundled handler "
            f"(lambdapool/tools/emulator/demo_handler.py)",
            file=sys.stderr,
        )
        for name, kind, options in runs:
            scenario = fanout.run_scenario(
                report, handler, kind, target, burst, name=name, progress=progress, **options
            )
            scenario.extra["description"] = what[name][1]  # the chart's panel says what the run is
    print(summary_table(report))
    print()
    width = max(map(len, what))
    for name, (text, _) in what.items():
        print(textwrap.fill(text, 100, initial_indent=f"{name.ljust(width)}  ", subsequent_indent=" " * (width + 2)))
    print()
    for scenario in report.scenarios:
        print(verdict(scenario))
    print(textwrap.fill(queueing(report, burst.concurrency, cap), 100))
    write_outputs(report, args.out / CHART, None, sys.stdout)
    return 0
