#!/usr/bin/env python3
"""pgbench -S throughput through the local proxy, through PgBouncer, and direct, in one run.

    python benchmarks/bench_proxy.py [--seconds 5] [--clients 10,50] [--cap 10] [--latency-ms 0,1] [--rounds 1]

Every cell is ``pgbench -n -S -M extended -T SECONDS -c CLIENTS -j 2`` against the same
throwaway Postgres (scale 1), through:
  * direct: no pooler (one backend per client);
  * pgbouncer: Debian's PgBouncer, transaction pooling, ``default_pool_size = --cap``,
    run as user postgres in a temp dir (lambdapool.tools.testing.pgbouncer);
  * local: lambdapool's LocalProxy, ``max_backends = --cap`` (uvloop when installed).
"Added latency per query" is server-side: each statement also runs ``pg_sleep(latency)``, so
a backend stays busy for that long and the poolers' caps and queues matter, as they do
against a real network database. The ratio column is local / PgBouncer (target >= 0.5 at 50
clients). The CPU columns are each pooler's own CPU time (user + system) per transaction in
that cell: the local proxy runs in this process (getrusage), PgBouncer is read from
/proc/PID/stat; the least over the rounds. Prepared mode is left out because PgBouncer 1.18
cannot pool named statements.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile

from lambdapool.testing import LocalProxy, PostgresServer
from lambdapool.tools.testing.pgbouncer import PgBouncer

PASSWORD = "bench-Pw-1"


def run_pgbench(pgbench: str, dsn: str, clients: int, seconds: int, script: str | None) -> tuple[float, int]:
    """(tps, transactions processed)."""
    cmd = [pgbench, "-n", "-M", "extended", "-T", str(seconds), "-c", str(clients), "-j", "2"]
    cmd += ["-f", script] if script else ["-S"]
    out = subprocess.run([*cmd, dsn], capture_output=True, text=True, timeout=seconds * 10 + 60)
    match = re.search(r"tps = ([\d.]+)", out.stdout)
    done = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    if out.returncode != 0 or not match or not done:
        raise RuntimeError(f"pgbench failed ({out.returncode}): {out.stderr[-500:]}")
    return float(match.group(1)), int(done.group(1))


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process ``pid`` (None: this process, where the local proxy runs)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def measure(
    pgbench: str, dsn: str, clients: int, seconds: int, script: str | None, pid: int | None
) -> tuple[float, float]:
    """(tps, the pooler's CPU microseconds per transaction) for one pgbench run."""
    before = cpu_seconds(pid)
    rate, transactions = run_pgbench(pgbench, dsn, clients, seconds, script)
    return rate, (cpu_seconds(pid) - before) / max(transactions, 1) * 1e6


def latency_script(directory: str, latency_ms: float) -> str | None:
    if not latency_ms:
        return None
    path = os.path.join(directory, f"select_{latency_ms:g}ms.sql")
    with open(path, "w") as f:
        f.write(
            "\\set aid random(1, 100000 * :scale)\n"
            f"SELECT abalance FROM pgbench_accounts, pg_sleep({latency_ms / 1000:g}) WHERE aid = :aid;\n"
        )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--clients", default="10,50")
    parser.add_argument("--cap", type=int, default=10)
    parser.add_argument("--latency-ms", default="0,1")
    parser.add_argument("--rounds", type=int, default=1, help="repeat each cell, report the best")
    args = parser.parse_args()
    pgbench = shutil.which("pgbench")
    if not pgbench:
        print("pgbench not found (Debian: apt-get install postgresql-client)", file=sys.stderr)
        return 2
    clients = [int(c) for c in args.clients.split(",")]
    latencies = [float(x) for x in args.latency_ms.split(",")]
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        PostgresServer(max_connections=max(clients) + 20, password=PASSWORD) as pg,
    ):
        init = subprocess.run([pgbench, "-i", "-s", "1", "-q", pg.dsn], capture_output=True, text=True)
        if init.returncode != 0:
            raise RuntimeError(init.stderr)
        with PgBouncer(pg, default_pool_size=args.cap, max_client_conn=max(clients) + 10) as bouncer, \
                LocalProxy(pg.dsn, max_backends=args.cap, borrow_timeout=60) as proxy:  # fmt: skip
            # name -> (dsn, the pid whose CPU is the pooler's; None: this process)
            targets = {"direct": (pg.dsn, None), "pgbouncer": (bouncer.dsn, bouncer.pid), "local": (proxy.dsn, None)}
            for latency in latencies:
                script = latency_script(tmp, latency)
                for n in clients:
                    cell, cpu = {}, {}
                    for name, (dsn, pid) in targets.items():
                        runs = [measure(pgbench, dsn, n, args.seconds, script, pid) for _ in range(args.rounds)]
                        cell[name] = max(rate for rate, _ in runs)
                        cpu[name] = min(us for _, us in runs)
                    rows.append((latency, n, cell, cpu))
                    print(f"  measured latency={latency:g}ms clients={n}: {cell}", file=sys.stderr, flush=True)
            stats = proxy.stats()
    print(f"\npgbench -S -M extended, {args.seconds:g}s per cell, cap {args.cap} backends, best of {args.rounds}")
    print(f"{'latency/query':>13} {'clients':>7} {'direct tps':>11} {'pgbouncer tps':>14} {'local tps':>10} "
          f"{'local/pgbouncer':>16} {'CPU us/tx: pgbouncer':>21} {'local':>6}")  # fmt: skip
    for latency, n, cell, cpu in rows:
        ratio = cell["local"] / cell["pgbouncer"] if cell["pgbouncer"] else float("nan")
        print(f"{latency:>11g}ms {n:>7} {cell['direct']:>11.0f} {cell['pgbouncer']:>14.0f} {cell['local']:>10.0f} "
              f"{ratio:>16.2f} {cpu['pgbouncer']:>21.1f} {cpu['local']:>6.1f}")  # fmt: skip
    print(f"\nlocal proxy: peak backends {stats['peak_backends']} (cap {stats['max_backends']}), "
          f"transactions {stats['transactions']}, pinned sessions {stats['pinned_sessions']}, "
          f"borrow timeouts {stats['borrow_timeouts']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
