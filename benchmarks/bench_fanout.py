#!/usr/bin/env python3
"""A burst of 1,000 invocations over 100 Lambda environments, three ways, in one run.

    python benchmarks/bench_fanout.py [--invocations 1000] [--concurrency 100]
                                      [--max-connections 30] [--cap 20] [--sleep 0.01]

The same burst (the bundled demo handler: one query holding its connection ``--sleep``
seconds) runs against one throwaway Postgres (``max_connections=30``, an ordinary role):
  * direct, with the SDK's budget guard (the baseline: no pooler at all),
  * through the local proxy capped at ``--cap`` backends,
  * through PgBouncer (transaction mode) with a pool of ``--cap``.
Environments are forked from a zygote (``fork_server``), so cold latency here is the fork,
the runtime client's start and the first connect, not an interpreter start. Backends are
sampled from pg_stat_activity at 50 Hz. Rows: invocations/s (and against direct), warm and
cold p50/p99 latency, peak backends against the limit, failures.
"""

from __future__ import annotations

import argparse
import sys

from lambdapool.tools.cli.emulate import ProgressLine, summary_table
from lambdapool.tools.emulator import Report, fanout

SCENARIOS = ("direct", "local", "pgbouncer")


def table(report: Report) -> str:
    summaries = report.summary()
    base = summaries["direct"]["invocations_per_s"] or 0.0
    header = ("pooler", "inv/s", "x direct", "warm p50", "warm p99", "cold p50", "cold p99", "peak/limit", "failed")
    rows = [header]
    for name, s in summaries.items():
        rate = s["invocations_per_s"] or 0.0
        rows.append((name, f"{rate:.0f}", f"{rate / base:.2f}x" if base else "-",
                     *(f"{s[k]:.0f} ms" if s[k] is not None else "-"
                       for k in ("warm_p50_ms", "warm_p99_ms", "cold_p50_ms", "cold_p99_ms")),
                     f"{s['peak_backends']}/{s['limit']}", str(s["failures"])))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invocations", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--max-connections", type=int, default=30)
    parser.add_argument("--cap", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=0.01, help="seconds each invocation holds its connection")
    parser.add_argument("--timeout", type=float, default=30.0, help="the functions' timeout")
    args = parser.parse_args()
    burst = fanout.Burst(args.invocations, args.concurrency, timeout=args.timeout, event={"sleep": args.sleep})
    progress = ProgressLine()
    with fanout.embedded_database(args.max_connections) as target, fanout.demo_handler() as handler:
        report = Report(f"{burst.invocations} invocations over {burst.concurrency} Lambda environments, "
                        f"max_connections={args.max_connections}, cap {args.cap}")  # fmt: skip
        print(report.title, file=sys.stderr)
        for kind in SCENARIOS:
            fanout.run_scenario(report, handler, kind, target, burst, cap=args.cap, progress=progress)
    print(summary_table(report))
    print()
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
