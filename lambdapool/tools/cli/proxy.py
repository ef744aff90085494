"""`lambdapool proxy`: run the local proxy in the foreground with a one-line status.

Ctrl-C or SIGTERM stops it cleanly (clients are disconnected, backends closed) with exit 0.
The backend DSN may also come from ``LAMBDAPOOL_PROXY_BACKEND`` so its password stays out of
the process list. A DSN with several hosts is followed through a failover (docs/proxy.md,
"Failover"); ``--reader`` makes the proxy a read-only endpoint (hot standbys only).
"""

from __future__ import annotations

import argparse
import os
import sys

from lambdapool.errors import ConfigError

HELP = "run the local Postgres proxy (RDS Proxy-like pooler) in the foreground"


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, secret = value.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag}: expected NAME=SECRET (the value given has no '=' or no name)")
        out[key] = secret
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default=os.environ.get("LAMBDAPOOL_PROXY_BACKEND"),
        help="the server's libpq URI or key=value string; several hosts (postgresql://u@h1:p1,h2:p2/db) "
        "are followed through a failover (default: $LAMBDAPOOL_PROXY_BACKEND)",
    )
    parser.add_argument(
        "--reader",
        action="store_true",
        help="a read-only endpoint: lend backends on hot standbys only, as RDS Proxy's reader endpoints "
        "(default: the writer)",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:6433", help="HOST:PORT to accept clients on (default 127.0.0.1:6433)"
    )
    cap = parser.add_mutually_exclusive_group()
    cap.add_argument("--max-backends", type=int, help="cap on server connections")
    cap.add_argument(
        "--max-connections-percent",
        type=float,
        help="cap as a share of the server's max_connections (default 100, like RDS Proxy)",
    )
    parser.add_argument(
        "--borrow-timeout", type=float, default=120.0, help="seconds a client waits for a backend (default 120)"
    )
    parser.add_argument(
        "--idle-client-timeout", type=float, default=1800.0, help="close clients idle this long (default 1800)"
    )
    parser.add_argument("--max-idle-backends", type=int, help="close idle backends beyond this many")
    parser.add_argument("--max-client-connections", type=int, help="refuse clients beyond this many")
    parser.add_argument(
        "--max-connection-rate",
        type=float,
        help="refuse new client connections beyond this many a second (RDS Proxy's rate limit)",
    )
    parser.add_argument(
        "--borrow-on-connect",
        action="store_true",
        help="borrow a backend during each login, as RDS Proxy does (a full pool fails the connect)",
    )
    parser.add_argument("--backend-max-lifetime", type=float, help="close backends older than this many seconds")
    parser.add_argument(
        "--auth",
        choices=("trust", "scram", "iam", "cloud-sql-iam"),
        default="trust",
        help="client authentication (default trust); cloud-sql-iam needs --gce-metadata",
    )
    parser.add_argument(
        "--user", action="append", default=[], metavar="NAME=PASSWORD", help="a SCRAM user (repeatable)"
    )
    parser.add_argument(
        "--iam-credential",
        action="append",
        default=[],
        metavar="ACCESS_KEY_ID=SECRET",
        help="test credentials IAM tokens must be signed with (repeatable)",
    )
    parser.add_argument("--region", help="the region IAM tokens must be signed for")
    parser.add_argument(
        "--gce-metadata",
        metavar="EMAIL",
        help=(
            "with --auth cloud-sql-iam: run a metadata-server emulator for this service account "
            "(NAME@PROJECT.iam.gserviceaccount.com) beside the proxy; point functions at it with the "
            "GCE_METADATA_HOST the banner prints. The proxy takes the tokens it issues"
        ),
    )
    parser.add_argument(
        "--token-ttl", type=float, default=3600.0, help="seconds a --gce-metadata access token lives (default 3600)"
    )
    parser.add_argument("--tls", action="store_true", help="offer TLS to clients (self-signed unless --cert-file)")
    parser.add_argument("--require-tls", action="store_true", help="refuse clients without TLS (implies --tls)")
    parser.add_argument("--cert-file", help="PEM certificate for client TLS")
    parser.add_argument("--key-file", help="PEM key of --cert-file")
    parser.add_argument(
        "--status-interval", type=float, default=1.0, help="seconds between status lines (default 1; 0: none)"
    )


def status_line(stats: dict) -> str:
    pins = stats["pinned_sessions"]
    return (
        f"clients {stats['clients']} (peak {stats['peak_clients']}), waiting {stats['waiting']}, "
        f"backends {stats['backends_in_use']} busy/{stats['backends_idle']} idle of {stats['max_backends']} "
        f"(peak {stats['peak_backends']}), transactions {stats['transactions']}, "
        f"borrow timeouts {stats['borrow_timeouts']}, pinned {pins}, auth failures {stats['auth_failures']}"
    )


def run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from lambdapool.tools.proxy.local import LocalProxy, new_event_loop
    from lambdapool.tools.proxy.server import ProxyServer

    if not args.backend:
        raise ConfigError(
            "--backend: give the server's URI (postgresql://user:pw@host:port/db) or set LAMBDAPOOL_PROXY_BACKEND"
        )
    if args.auth == "cloud-sql-iam" and not args.gce_metadata:
        raise ConfigError("--auth cloud-sql-iam: give --gce-metadata EMAIL (the service account whose tokens it takes)")
    if args.gce_metadata and args.auth != "cloud-sql-iam":
        raise ConfigError("--gce-metadata: only with --auth cloud-sql-iam")
    metadata = None
    if args.gce_metadata:
        from lambdapool.tools.testing.metadata import MetadataServer

        metadata = MetadataServer(args.gce_metadata, args.token_ttl)
    proxy = LocalProxy(
        args.backend,
        listen=args.listen,
        max_backends=args.max_backends,
        max_connections_percent=args.max_connections_percent,
        borrow_timeout=args.borrow_timeout,
        idle_client_timeout=args.idle_client_timeout,
        max_idle_backends=args.max_idle_backends,
        max_client_connections=args.max_client_connections,
        backend_max_lifetime=args.backend_max_lifetime,
        max_connection_rate=args.max_connection_rate,
        borrow_on_connect=args.borrow_on_connect,
        auth=args.auth,
        users=_pairs(args.user, "--user"),
        iam_credentials=_pairs(args.iam_credential, "--iam-credential"),
        region=args.region,
        metadata=metadata,
        tls=args.tls or args.require_tls,
        require_tls=args.require_tls,
        cert_file=args.cert_file,
        key_file=args.key_file,
        role="reader" if args.reader else "writer",
    )
    tty = sys.stdout.isatty()

    async def main() -> None:
        server = ProxyServer(proxy.settings)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        target = proxy.settings.backend
        tls = "required" if args.require_tls else bool(server.ssl_context)
        ca_file = f", CA file {server.ca_file}" if server.ca_file else ""
        role = ", role=reader" if args.reader else ""
        print(
            f"lambdapool proxy: listening on {server.host}:{server.port} -> {target.describe()} "
            f"(max_backends={server.pool.cap}, auth={proxy.settings.auth}, tls={tls}{role}){ca_file}",
            flush=True,
        )
        if metadata is not None:
            print(
                f"lambdapool proxy: metadata server for {metadata.email} (user {metadata.db_user}): "
                f"GCE_METADATA_HOST={metadata.host}",
                flush=True,
            )
        try:
            if args.status_interval <= 0:
                await stop.wait()
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), args.status_interval)
                except asyncio.TimeoutError:
                    line = status_line(server.stats())
                    print(("\r\x1b[K" + line) if tty else line, end="" if tty else "\n", flush=True)
        finally:
            final = status_line(server.stats())
            await server.stop()
            print(("\n" if tty else "") + f"lambdapool proxy: stopped; {final}", flush=True)

    loop = new_event_loop()
    try:
        if metadata is not None:
            metadata.start()  # its own thread: the function fetches tokens from it over HTTP
        loop.run_until_complete(main())
    finally:
        loop.close()
        if metadata is not None:
            metadata.stop()
    return 0
