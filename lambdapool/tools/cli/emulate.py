"""`lambdapool emulate`: run your handler under the local Lambda emulator, through a pooler.

``lambdapool emulate app.py:handler --pooler direct --pooler local --concurrency 50
--invocations 500`` runs the same burst once per ``--pooler``, against ``--dsn`` or a throwaway
Postgres (``--max-connections``), shows progress on stderr while it runs, then prints the
scenarios side by side, and each distinct error with its message and the traceback of its first
occurrence; ``--chart`` and ``--json`` keep the picture and the figures (and the errors). It exits
1 when an invocation failed for another reason than the database refusing connections (a
burst against a limit is expected to meet them), unless ``--allow-failures``.
The handler is ``app.py:handler`` or Lambda's ``app.handler``; a Cloud Function (``(request)``,
``(cloud_event)``) runs on functions-framework servers, told from its signature or
``--platform gcp``.
``--gce-metadata EMAIL`` runs Google's metadata server (:class:`lambdapool.testing.MetadataServer`)
for that service account during the run and puts its ``GCE_METADATA_HOST`` in the handler's
environment; ``--pooler cloud-sql`` puts a local proxy taking Cloud SQL IAM logins (that
server's access tokens, over TLS) in front of the database, with ``LAMBDAPOOL_POOLER=cloud-sql``
and ``LAMBDAPOOL_IAM_AUTH=true``.
``--max-concurrency N`` runs the environments as Lambda Managed Instances (N worker processes
each, by awslambdaric's own multi-process mode); ``--setup FILE.sql`` runs a script once as the
database's owner before the bursts. The throwaway database's role (``app``) owns a schema of
its own, first on its search path, so handlers may create their tables.
The scenario machinery is :mod:`lambdapool.tools.emulator.fanout`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from lambdapool.errors import ConfigError

HELP = "run a handler under the Lambda emulator with a pooler and report what the database saw"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "handler",
        help=(
            "path/to/app.py:function or Lambda's app.function (module from the current directory): "
            "a Lambda handler (event, context) or a Cloud Function (request) / (cloud_event)"
        ),
    )
    parser.add_argument(
        "--platform",
        choices=("aws", "gcp"),
        help=(
            "aws: Lambda environments under awslambdaric; gcp: Cloud Functions instances on "
            "functions-framework (HTTP or CloudEvent). Default: told from the function's signature"
        ),
    )
    parser.add_argument(
        "--pooler",
        action="append",
        metavar="NAME",
        help=(
            "direct, local, pgbouncer, rds-proxy or cloud-sql (Cloud SQL IAM logins with the --gce-metadata "
            "account's tokens); repeat (or comma-separate) to compare side by side (default: local)"
        ),
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=20,
        help="invocations in flight, and Lambda environments at most (default 20)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        metavar="N",
        help=(
            "run Lambda Managed Instances environments of N worker processes each "
            "(AWS_LAMBDA_MAX_CONCURRENCY), packed full before another starts; "
            "--concurrency / N environments at most. With --platform gcp: requests in flight per "
            "Cloud Functions instance (default 1)"
        ),
    )
    parser.add_argument("--invocations", type=int, default=200, help="invocations in the burst (default 200)")
    parser.add_argument(
        "--light",
        type=int,
        default=0,
        metavar="N",
        help="add N light in-process instances, invoked as many rounds as the environments",
    )
    db = parser.add_mutually_exclusive_group()
    db.add_argument("--dsn", help="a running database (default: a throwaway Postgres)")
    db.add_argument(
        "--max-connections", type=int, default=30, help="max_connections of the throwaway Postgres (default 30)"
    )
    parser.add_argument(
        "--setup",
        type=Path,
        metavar="FILE.sql",
        help=(
            "SQL run once as the database's owner before the bursts (tables, grants, seed rows); "
            "the throwaway database's handlers connect as role app, which owns schema app"
        ),
    )
    parser.add_argument("--cap", type=int, help="the pooler's cap on backends (default: two thirds of the limit)")
    parser.add_argument("--no-guard", action="store_true", help="direct: turn the SDK's budget guard off")
    parser.add_argument("--timeout", type=float, default=10.0, help="the function's timeout in seconds (default 10)")
    parser.add_argument("--event", default="{}", help='the event, as JSON (each invocation adds "n")')
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the handler (repeatable)",
    )
    parser.add_argument(
        "--gce-metadata",
        metavar="EMAIL",
        help=(
            "run Google's metadata server for this service account (NAME@PROJECT.iam.gserviceaccount.com) "
            "and give the handler its GCE_METADATA_HOST: its access token and email come from there "
            "(default with --pooler cloud-sql: lambdapool-fn@lambdapool-local.iam.gserviceaccount.com)"
        ),
    )
    parser.add_argument("--chart", type=Path, metavar="PNG", help="write the backends-over-time chart here")
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="write the figures, the errors and the timelines here"
    )
    parser.add_argument(
        "--allow-failures",
        action="store_true",
        help=(
            "exit 0 even when invocations failed (by default, a failure other than the database "
            "refusing connections exits 1)"
        ),
    )


def poolers(values: Sequence[str] | None) -> list[str]:
    from lambdapool.tools.emulator.fanout import POOLERS

    names = [name.strip() for value in (values or ["local"]) for name in value.split(",") if name.strip()]
    for name in names:
        if name not in POOLERS:
            raise ConfigError(f"--pooler {name!r}: not one of {', '.join(POOLERS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--pooler: each pooler once ({', '.join(names)} given)")
    return names


def _env_pairs(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name:
            raise ConfigError("--env: expected NAME=VALUE (a value given has no '=' or no name)")
        out[name] = setting
    return out


def _event(text: str) -> dict[str, Any]:
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--event: not JSON ({exc})") from None
    if not isinstance(event, dict):
        raise ConfigError(f"--event: expected a JSON object, got {type(event).__name__}")
    return event


class ProgressLine:
    """One status line on stderr, rewritten in place on a terminal; in a log, a line every
    few seconds and one at the end of each scenario."""

    def __init__(self, stream: IO[str] | None = None, every: float = 3.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every
        self._last = 0.0
        self._finished: set[str] = set()

    def __call__(self, name: str, done: int, total: int, failed: int, backends: int) -> None:
        if name in self._finished:
            return
        text = f"{name}: {done}/{total} invocations, {failed} failed, {backends} backends now"
        end = done >= total
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if end else ""))
        elif end or time.monotonic() - self._last >= self.every:
            self.stream.write(text + "\n")
            self._last = time.monotonic()
        self.stream.flush()
        if end:
            self._finished.add(name)


def summary_table(report: Any) -> str:
    """The figures a reader compares, one column per scenario."""
    summaries = report.summary()

    def trio(s: dict[str, Any], kind: str) -> str:
        values = [s[f"{kind}_p{p}_ms"] for p in (50, 95, 99)]
        return "-" if values[0] is None else " / ".join(f"{v:.0f}" for v in values)

    def peak(s: dict[str, Any]) -> str:
        return f"{s['peak_backends']} / {s['limit']}" if s["limit"] is not None else str(s["peak_backends"])

    rows: list[tuple[str, Any]] = [
        ("invocations", lambda s: s["invocations"]),
        ("failed", lambda s: s["failures"]),
        ("  refused: too many clients", lambda s: s.get("refused")),
        ("  timed out connecting", lambda s: s.get("timed_out")),
        ("throttled", lambda s: s["throttles"]),
        ("cold starts", lambda s: s["cold_starts"]),
        ("instances (environments)", lambda s: s["instances"]),
        ("processes", lambda s: s["processes"]),
        ("connects", lambda s: s.get("connects")),
        ("reconnects", lambda s: s.get("reconnects")),
        ("peak backends / limit", peak),
        ("pooler cap", lambda s: s.get("cap")),
        ("pooler's own peak", lambda s: s.get("pooler_peak")),
        ("pinned sessions", lambda s: s.get("pinned")),
        ("backend samples per s", lambda s: s["sample_hz"]),
        ("invocations per s", lambda s: s["invocations_per_s"]),
        ("cold p50/p95/p99 ms", lambda s: trio(s, "cold")),
        ("warm p50/p95/p99 ms", lambda s: trio(s, "warm")),
    ]
    table = [["", *summaries]] + [
        [label, *("-" if (v := get(s)) is None else str(v) for s in summaries.values())] for label, get in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [report.title]
    for i, row in enumerate(table):
        lines.append(
            "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))).rstrip()
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


@contextlib.contextmanager
def database(dsn: str | None, max_connections: int) -> Iterator[Any]:
    """``--dsn`` or a throwaway Postgres, as a :class:`lambdapool.tools.emulator.fanout.Target`."""
    from lambdapool.tools.emulator import fanout

    if dsn:
        yield fanout.existing_database(dsn)
    else:
        with fanout.embedded_database(max_connections) as target:
            yield target


def write_outputs(report: Any, chart: Path | None, json_path: Path | None, out: IO[str]) -> None:
    if chart is not None:
        from lambdapool.tools.emulator.fanout_chart import draw_comparison

        print(f"chart written to {draw_comparison(report, chart).resolve()}", file=out)
    if json_path is not None:
        print(f"figures written to {report.write_json(json_path).resolve()}", file=out)


def run(args: argparse.Namespace) -> int:
    from lambdapool.tools.emulator import Report, fanout

    kinds = poolers(args.pooler)
    handler = fanout.HandlerRef.parse(args.handler)
    shape = handler.platform(args.platform)
    fanout.require(
        *(["matplotlib"] if args.chart else []),
        *(["moto"] if "rds-proxy" in kinds else []),
        *(["functions_framework"] if shape.platform == "gcp" else []),
    )
    burst = fanout.Burst(
        args.invocations,
        args.concurrency,
        args.light,
        args.timeout,
        _event(args.event),
        max_concurrency=args.max_concurrency,
        platform=shape.platform,
        signature=shape.signature or "http",
    ).validate()
    if args.setup is not None and not args.setup.is_file():
        raise ConfigError(f"--setup {args.setup}: no such file (a SQL script to run before the bursts)")
    env = _env_pairs(args.env)
    progress = ProgressLine()
    with contextlib.ExitStack() as stack:
        metadata = None
        if args.gce_metadata or "cloud-sql" in kinds:
            metadata = stack.enter_context(_metadata_server(args.gce_metadata))
            env = {**metadata.environ, **env}  # --env wins
        target = stack.enter_context(database(args.dsn, args.max_connections))
        if args.setup is not None:
            fanout.run_setup(target, args.setup)
        width = burst.describe() + (f" + {burst.light} light instances" if burst.light else "")
        report = Report(
            f"{handler.path.name}:{handler.function}, {burst.total} invocations over {width}, "
            f"against {target.description}"
        )
        print(report.title, file=sys.stderr)
        if args.platform is None and shape.platform == "gcp":
            kind = "CloudEvent" if shape.signature == "cloudevent" else "HTTP"
            print(f"{handler.function}: a Cloud Function ({shape.why}), run as {kind}", file=sys.stderr)
        for kind in kinds:
            fanout.run_scenario(
                report,
                handler,
                kind,
                target,
                burst,
                cap=args.cap,
                budget_guard=not args.no_guard,
                env=env,
                progress=progress,
                metadata=metadata,
            )
    print(summary_table(report))
    return report_errors(report, args.allow_failures, lambda: write_outputs(report, args.chart, args.json, sys.stdout))


@contextlib.contextmanager
def _metadata_server(email: str | None) -> Iterator[Any]:
    """Google's metadata server for the run (for ``email``, or a default account), announced on stderr."""
    from lambdapool.tools.testing.metadata import MetadataServer

    with MetadataServer(email) if email else MetadataServer() as server:
        print(
            f"metadata server for {server.email} (database user {server.db_user}): GCE_METADATA_HOST={server.host}",
            file=sys.stderr,
        )
        yield server


def report_errors(report: Any, allow_failures: bool, write: Any) -> int:
    """Print each distinct error (type, message, first traceback), run ``write`` (the chart and
    JSON), and give the exit status: 1 if an invocation failed for another reason than the
    database refusing connections, unless failures are allowed."""
    from lambdapool.tools.emulator import failures, fanout

    errors = failures.distinct_errors({s.name: s.results for s in report.scenarios})
    if errors:
        print("\n" + failures.describe(errors, len(report.scenarios)))
    write()
    unexpected = sum(len(fanout.unexpected_failures(s.results)) for s in report.scenarios)
    if not unexpected or allow_failures:
        return 0
    total = sum(len(s.results) for s in report.scenarios)
    print(
        f"lambdapool emulate: {unexpected} of {total} invocations failed, not for want of a connection "
        "(the errors are above); --allow-failures to exit 0 anyway",
        file=sys.stderr,
    )
    return 1
