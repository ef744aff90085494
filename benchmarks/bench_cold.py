#!/usr/bin/env python3
"""What a cold start costs: a fresh Python process from start to its first row, CPU and memory.

    python benchmarks/bench_cold.py [--rounds 15]

Each sample is a new process (what a Lambda cold start is): Python starts, imports, builds what
it needs, connects and fetches one row, and exits. The parent reads that child's own CPU time
(user + sys) and peak RSS (``ru_maxrss``) from ``os.wait4``, so the server, the proxy (threads
of this process) and other children do not count. Contenders take turns in a new random order
each round (a shared VM drifts; back-to-back batches would compare moments, not code); the
first round is a warm-up and is dropped. Figures are medians; ratios are paired (each round's
contender over its reference in the same round, then the median of those).

Contenders (psycopg, all through the bundled local proxy, on 127.0.0.1, no TLS):
  * hand-held:     ``import psycopg``; ``psycopg.connect(dsn, password=...)``; ``SELECT 1``
                   (the floor), against the proxy in SCRAM mode
  * lp password:   ``import lambdapool``; ``Database(dsn)``; ``db.connection()`` + ``SELECT 1``,
                   same proxy, same password (target: <= 1.05x hand-held CPU)
  * lp IAM:        the same with ``iam_auth=True`` against the proxy in IAM mode, AWS keys in
                   the environment as on Lambda (target: <= 1.15x and <= +8 MiB over lp password)
  * lp IAM boto3:  the previous implementation, for comparison: the token from
                   ``boto3.client("rds").generate_db_auth_token`` (the child swaps it in)
  * lp Cloud SQL IAM: ``pooler="cloud-sql"``, ``iam_auth=True`` against the proxy in Cloud SQL
                   IAM mode (TLS), the token and email from the metadata emulator
                   (``GCE_METADATA_HOST``), as on Cloud Run (target: <= 1.05x and <= +2 MiB over
                   lp password TLS)
  * lp password TLS: ``lp password`` over TLS, the Cloud SQL row's reference (IAM logins use TLS)
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "bench-cold-Pw-1"
AKID, SECRET = "AKIABENCHCOLD0000001", "bench-cold-secret-key"
REGION = "us-east-1"
SERVICE_ACCOUNT = "bench-fn@bench-project.iam.gserviceaccount.com"

CHILDREN = {
    "hand-held": """
        import psycopg
        conn = psycopg.connect({scram_dsn!r}, password={password!r})
        assert conn.execute("SELECT 1").fetchone() == (1,)
    """,
    "lp password": """
        import lambdapool
        db = lambdapool.Database({scram_dsn_pw!r}, pooler="local")
        with db.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    """,
    "lp IAM": """
        import lambdapool
        db = lambdapool.Database({iam_dsn!r}, pooler="local", iam_auth=True)
        with db.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    """,
    "lp IAM boto3": """
        import lambdapool
        from lambdapool.credentials import iam

        def _fetch(self):  # what IamAuthToken did before: a boto3 rds client signs the token
            import boto3
            client = boto3.session.Session().client("rds", region_name=self.region)
            token = client.generate_db_auth_token(DBHostname=self.host, Port=self.port,
                                                  DBUsername=self.user, Region=self.region)
            return self._secret_of(token), self._lifetime

        iam.IamAuthToken._fetch = _fetch
        db = lambdapool.Database({iam_dsn!r}, pooler="local", iam_auth=True)
        with db.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    """,
}
CHILDREN["lp password TLS"] = """
        import lambdapool
        db = lambdapool.Database({scram_tls_dsn_pw!r}, pooler="cloud-sql")
        with db.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    """
CHILDREN["lp Cloud SQL IAM"] = """
        import lambdapool
        db = lambdapool.Database({cloud_sql_dsn!r}, pooler="cloud-sql", iam_auth=True)
        with db.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    """
PAIRS = [
    ("lp password", "hand-held"),
    ("lp IAM", "lp password"),
    ("lp IAM boto3", "lp password"),
    ("lp Cloud SQL IAM", "lp password TLS"),
]
TARGETS = {
    ("lp password", "hand-held"): "<= 1.05x",
    ("lp IAM", "lp password"): "<= 1.15x, <= +8 MiB",
    ("lp Cloud SQL IAM", "lp password TLS"): "<= 1.05x, <= +2 MiB",
}


def child_env() -> dict[str, str]:
    """A Lambda-like environment: keys and region in variables, nothing from ~/.aws."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": "/nonexistent/config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
    }  # fmt: skip


def run_child(code: str, extra_env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """CPU ms (user + sys), peak RSS MiB and wall ms of one fresh process running ``code``."""
    import time

    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], env={**child_env(), **(extra_env or {})}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - started) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr.read().decode()[-3000:] if proc.stderr else ''}")
    if proc.stderr:
        proc.stderr.close()
    return (usage.ru_utime + usage.ru_stime) * 1000, usage.ru_maxrss / 1024, wall


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psycopg

    return (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}; Python "
            f"{platform.python_version()}, psycopg {psycopg.__version__}, {platform.platform()}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="measured rounds (one warm-up round more)")
    parser.add_argument("--only", nargs="*", choices=list(CHILDREN), help="contenders to run (default: all)")
    args = parser.parse_args()
    names = args.only or list(CHILDREN)

    from lambdapool.testing import LocalProxy, MetadataServer, PostgresServer

    with PostgresServer(password=PASSWORD) as pg, MetadataServer(email=SERVICE_ACCOUNT) as metadata, \
         LocalProxy(backend=pg.dsn, auth="scram", users={"postgres": PASSWORD}) as scram, \
         LocalProxy(backend=pg.dsn, auth="scram", users={"postgres": PASSWORD}, tls=True) as scram_tls, \
         LocalProxy(backend=pg.dsn, auth="iam", iam_credentials={AKID: SECRET}, region=REGION) as iam, \
         LocalProxy(backend=pg.dsn, auth="cloud-sql-iam", metadata=metadata, tls=True) as cloud_sql:  # fmt: skip
        values = {
            "scram_dsn": f"postgresql://postgres@{scram.host}:{scram.port}/postgres",
            "scram_dsn_pw": f"postgresql://postgres:{PASSWORD}@{scram.host}:{scram.port}/postgres",
            "scram_tls_dsn_pw": f"postgresql://postgres:{PASSWORD}@{scram_tls.host}:{scram_tls.port}/postgres"
            "?sslmode=require",
            "iam_dsn": f"postgresql://postgres@{iam.host}:{iam.port}/postgres",
            "cloud_sql_dsn": f"postgresql://{cloud_sql.host}:{cloud_sql.port}/postgres",
            "password": PASSWORD,
        }
        codes = {name: textwrap.dedent(CHILDREN[name]).format(**values) for name in names}
        # Every child gets the metadata server's address, as every process on Cloud Run can reach one.
        env = {"GCE_METADATA_HOST": metadata.host}
        samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
        for round_no in range(args.rounds + 1):
            order = random.sample(names, len(names))
            for name in order:
                measured = run_child(codes[name], env)
                if round_no:  # round 0 warms the page cache, the proxy and the server
                    samples[name].append(measured)
            print(f"round {round_no}/{args.rounds}", file=sys.stderr, end="\r")
        proxies = (scram, scram_tls, iam, cloud_sql)
        proxy_failures = sum(proxy.stats()["auth_failures"] for proxy in proxies)

    print(f"\nbench_cold: fresh process -> import -> Database -> first row; {args.rounds} rounds, medians")
    print(f"machine: {machine()}")
    print(f"\n{'contender':<18} {'CPU ms':>8} {'wall ms':>8} {'peak RSS MiB':>13}")
    for name in names:
        cpu, rss, wall = (statistics.median(s[i] for s in samples[name]) for i in range(3))
        print(f"{name:<18} {cpu:>8.1f} {wall:>8.1f} {rss:>13.1f}")
    print(f"\n{'paired (median of per-round)':<36} {'CPU ratio':>9} {'RSS delta MiB':>14}  target")
    for a, b in PAIRS:
        if a in samples and b in samples:
            ratio = statistics.median(x[0] / y[0] for x, y in zip(samples[a], samples[b]))
            delta = statistics.median(x[1] - y[1] for x, y in zip(samples[a], samples[b]))
            print(f"{a + ' / ' + b:<36} {ratio:>8.3f}x {delta:>+14.1f}  {TARGETS.get((a, b), '')}")
    print(f"\nproxy auth failures: {proxy_failures}")


if __name__ == "__main__":
    main()
