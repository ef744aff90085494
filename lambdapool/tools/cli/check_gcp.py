"""`lambdapool check --platform gcp`: does what is deployed on Google Cloud fit Cloud SQL's limit?

Reads, with google-auth's application default credentials and plain REST (no google-cloud-*
client library): each Cloud Run function's ``serviceConfig`` (``maxInstanceCount``,
``maxInstanceRequestConcurrency``, ``environmentVariables``) from Cloud Functions v2
``projects.locations.functions.get`` (or ``.list`` to find the functions whose DSN points at the
instance), and the instance's ``settings.tier``, ``max_connections`` database flag and
``connectionPoolConfig`` from the Cloud SQL Admin API v1 ``instances.get``. Counts as ``plan
--platform gcp`` does (lambdapool/tools/budget_gcp.py: surge headroom included); exits 1 naming
the function that breaks the budget, 0 when it fits.

Endpoints: ``--functions-endpoint`` / ``--sqladmin-endpoint``, else gcloud's own overrides
``CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDFUNCTIONS`` / ``CLOUDSDK_API_ENDPOINT_OVERRIDES_SQL``,
else Google's (tests point them at a local server).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from lambdapool.errors import ConfigError
from lambdapool.tools.budget import Consumer, Limits, Tally, tally
from lambdapool.tools.budget_gcp import (
    DEFAULT_MAX_PER_INSTANCE,
    SURGE_RULE,
    CloudRunFunction,
    default_max_connections,
    pooler_count,
    surge,
    tier,
)

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
FUNCTIONS_API = "https://cloudfunctions.googleapis.com/"
SQLADMIN_API = "https://sqladmin.googleapis.com/"
TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The GCP flags (check.py adds them beside the AWS ones; --region and --function are shared)."""
    parser.add_argument("--project", help="gcp: the project (default: the credentials' or GOOGLE_CLOUD_PROJECT)")
    parser.add_argument("--instance", help="gcp: the Cloud SQL instance (its ID, as in PROJECT:REGION:ID)")
    parser.add_argument(
        "--functions-endpoint",
        help="gcp: Cloud Functions API root (default CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDFUNCTIONS or Google's)",
    )
    parser.add_argument(
        "--sqladmin-endpoint",
        help="gcp: Cloud SQL Admin API root (default CLOUDSDK_API_ENDPOINT_OVERRIDES_SQL or Google's)",
    )


def _root(flag: str | None, env: str, default: str) -> str:
    root = flag or os.environ.get(env) or default
    return root if root.endswith("/") else root + "/"


class _Google:
    """GET on Google REST APIs with application default credentials; errors become ConfigError
    naming what was read and the permission it needs (never a token)."""

    def __init__(self, project: str | None) -> None:
        try:
            import google.auth
            import urllib3
            from google.auth.exceptions import DefaultCredentialsError
            from google.auth.transport.urllib3 import AuthorizedHttp
        except ImportError:
            raise ConfigError(
                "check --platform gcp needs google-auth and urllib3: pip install 'lambdapool[gcp]'"
            ) from None
        try:
            credentials, found = google.auth.default(scopes=[SCOPE])
        except DefaultCredentialsError:
            raise ConfigError(
                "no Google credentials: run `gcloud auth application-default login`, set "
                "GOOGLE_APPLICATION_CREDENTIALS to a credentials file, or run where a metadata server answers"
            ) from None
        chosen = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or found
        if not chosen:
            raise ConfigError("no Google Cloud project: pass --project or set GOOGLE_CLOUD_PROJECT")
        self.project: str = chosen
        self._http = AuthorizedHttp(credentials, http=urllib3.PoolManager())
        self._urllib3 = urllib3

    def get(self, url: str, what: str, permission: str) -> dict[str, Any]:
        from google.auth.exceptions import RefreshError, TransportError

        try:
            response = self._http.request("GET", url, timeout=TIMEOUT)
        except RefreshError as exc:
            reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else type(exc).__name__
            raise ConfigError(f"{what}: Google credentials could not be refreshed ({reason})") from None
        except (TransportError, self._urllib3.exceptions.HTTPError) as exc:
            raise ConfigError(f"{what}: {url.split('/v')[0]} did not answer ({type(exc).__name__})") from None
        try:
            body = json.loads(response.data or b"{}")
        except ValueError:
            body = {}
        if response.status == 200:
            return body
        message = (body.get("error") or {}).get("message", "") if isinstance(body, dict) else ""
        said = f": {message}" if message else ""
        if response.status == 404:
            raise ConfigError(f"{what}: not found (HTTP 404{said})")
        if response.status in (401, 403):
            raise ConfigError(
                f"{what}: permission denied (HTTP {response.status}{said}); the credentials need {permission}"
            )
        raise ConfigError(f"{what}: HTTP {response.status}{said}")


@dataclass(frozen=True)
class Deployed:
    """A Cloud Run function as the Cloud Functions API describes it."""

    name: str
    max_instances: int | None  # None: not set, bounded only by quota
    concurrency: int
    connections: int
    pooler: str
    host: str | None

    @classmethod
    def from_api(cls, function: dict[str, Any]) -> Deployed:
        name = function.get("name", "").rsplit("/", 1)[-1]
        service = function.get("serviceConfig") or {}
        env = {k: str(v) for k, v in (service.get("environmentVariables") or {}).items()}
        concurrency = int(service.get("maxInstanceRequestConcurrency") or 1)
        try:
            setting = int(env.get("LAMBDAPOOL_MAX_PER_INSTANCE", DEFAULT_MAX_PER_INSTANCE))
        except ValueError:
            raise ConfigError(f"{name}: LAMBDAPOOL_MAX_PER_INSTANCE is not an integer") from None
        # A request holds one connection at a time: an instance never uses more than its concurrency.
        return cls(
            name,
            int(service["maxInstanceCount"]) if service.get("maxInstanceCount") else None,
            concurrency,
            max(1, min(setting, concurrency)),
            env.get("LAMBDAPOOL_POOLER", "direct"),
            _dsn_host(env),
        )

    @property
    def pooled(self) -> bool:
        return self.pooler == "cloud-sql-pooler"


def _dsn_host(env: dict[str, str]) -> str | None:
    """The host of the function's DSN (never the DSN itself: it could carry a password)."""
    dsn = env.get("LAMBDAPOOL_DSN") or env.get("DATABASE_URL") or ""
    if "://" in dsn:
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(dsn)
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        return unquote(query.get("host") or parts.hostname or "") or None
    return next((p.split("=", 1)[1] for p in dsn.split() if p.startswith("host=")), None)


@dataclass(frozen=True)
class Instance:
    """What the Cloud SQL Admin API says of the instance."""

    tier: str
    max_connections_flag: str | None
    pooling: bool
    max_pool_size: str | None
    pooler_count: int | None
    hosts: frozenset[str]


def _instance(api: _Google, root: str, name: str) -> Instance:
    url = f"{root}v1/projects/{quote(api.project)}/instances/{quote(name)}"
    db = api.get(url, f"read Cloud SQL instance {name!r} of project {api.project}", "cloudsql.instances.get")
    settings = db.get("settings") or {}
    flags = {f.get("name"): f.get("value") for f in settings.get("databaseFlags") or []}
    pool = settings.get("connectionPoolConfig") or {}
    pool_flags = {f.get("name"): f.get("value") for f in pool.get("flags") or []}
    hosts = {f"/cloudsql/{db['connectionName']}"} if db.get("connectionName") else set()
    hosts |= {a["ipAddress"] for a in db.get("ipAddresses") or [] if a.get("ipAddress")}
    return Instance(
        settings.get("tier", ""),
        flags.get("max_connections"),
        bool(pool.get("connectionPoolingEnabled")),
        pool_flags.get("max_pool_size"),
        int(pool["poolerCount"]) if pool.get("poolerCount") else None,
        frozenset(hosts),
    )


def _functions(api: _Google, root: str, region: str, names: list[str], hosts: frozenset[str]) -> list[Deployed]:
    base = f"{root}v2/projects/{quote(api.project)}/locations/{quote(region)}/functions"
    if names:
        return [
            Deployed.from_api(
                api.get(
                    f"{base}/{quote(n)}", f"read Cloud Run function {n!r} in {region}", "cloudfunctions.functions.get"
                )
            )
            for n in names
        ]
    found, token = [], ""
    while True:
        page = api.get(
            base + (f"?pageToken={quote(token)}" if token else ""),
            f"list Cloud Run functions in {region}",
            "cloudfunctions.functions.list",
        )
        for item in page.get("functions") or []:
            fn = Deployed.from_api(item)
            if fn.host and fn.host.rstrip("/") in hosts:
                found.append(fn)
        token = page.get("nextPageToken") or ""
        if not token:
            return found


def _limits(args: argparse.Namespace, db: Instance) -> Limits:
    if args.max_connections is not None:
        print(
            f"database {args.instance} ({db.tier}): max_connections flag {db.max_connections_flag or 'not set'} "
            f"(--max-connections {args.max_connections} used instead)"
        )
        value = args.max_connections
    elif db.max_connections_flag:
        value = int(db.max_connections_flag)
        print(f"database {args.instance} ({db.tier}): max_connections {value} (database flag)")
    else:
        value = default_max_connections(db.tier)
        print(f"database {args.instance} ({db.tier}): max_connections {value} (Cloud SQL's default for its memory)")
    from lambdapool.tools.cli.plan import limits_from

    args.max_connections, args.instance_class = value, None
    return limits_from(args)


def _pool_consumer(db: Instance) -> Consumer:
    if db.max_pool_size is None:
        raise ConfigError(
            "Managed Connection Pooling is on but max_pool_size is not set: its default depends on the vCPUs and "
            "is not one lambdapool can count; set it (lambdapool plan --platform gcp --pooler cloud-sql-pooler "
            "says the size)"
        )
    poolers = db.pooler_count or pooler_count(tier(db.tier).vcpus)
    size = int(db.max_pool_size)
    where = "poolerCount" if db.pooler_count else "one per 4 vCPUs"
    return Consumer(
        "cloud-sql-pooler",
        size * poolers,
        f"cloud-sql-pooler max_pool_size {size} x {poolers} pooler(s) ({where}) = {size * poolers}",
    )


def _verdict(t: Tally, direct: dict[str, Deployed]) -> str:
    if t.fits:
        return f"OK: the fan-out fits, {t.limits.usable - t.used} connection(s) to spare"
    breaker = t.breaker()
    assert breaker is not None  # over the limit: some consumer crossed it
    fn = direct.get(breaker.name)
    if fn is None:
        return f"FAIL: {breaker.name} breaks the budget: over by {t.over}; lower max_pool_size"
    assert fn.max_instances is not None
    largest = CloudRunFunction(fn.name, fn.max_instances, fn.concurrency, fn.connections).largest_max_instances(
        breaker.connections - t.over
    )
    fix = f"lower its max_instance_count from {fn.max_instances} to {largest}; or " if largest >= 1 else ""
    return (
        f"FAIL: {fn.name} breaks the budget: over by {t.over}; to fit, {fix}route it through Managed "
        "Connection Pooling (LAMBDAPOOL_POOLER=cloud-sql-pooler, port 6432); or raise max_connections to "
        f"{t.limits.max_connections + t.over}"
    )


def run(args: argparse.Namespace) -> int:
    if not args.instance:
        raise ConfigError("check --platform gcp: give --instance ID (the Cloud SQL instance)")
    if not args.region:
        raise ConfigError("check --platform gcp: give --region (where the functions are)")
    api = _Google(args.project)
    db = _instance(
        api, _root(args.sqladmin_endpoint, "CLOUDSDK_API_ENDPOINT_OVERRIDES_SQL", SQLADMIN_API), args.instance
    )
    limits = _limits(args, db)
    root = _root(args.functions_endpoint, "CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDFUNCTIONS", FUNCTIONS_API)
    functions = _functions(api, root, args.region, args.function, db.hosts)
    notes, unbounded = [], []
    consumers: list[Consumer] = []
    direct: dict[str, Deployed] = {}
    pooled = [f for f in functions if f.pooled]
    for fn in functions:
        if fn.max_instances is None:
            unbounded.append(fn.name)
            continue
        extra = surge(fn.max_instances)
        arithmetic = (
            f"{fn.name} ({fn.max_instances} + surge {extra}) instances x {fn.connections} conn = "
            f"{(fn.max_instances + extra) * fn.connections}"
        )
        if fn.pooled and db.pooling:
            notes.append(f"  client: {arithmetic} through cloud-sql-pooler")
            continue
        if fn.pooled:
            notes.append(f"  warning: {fn.name} says cloud-sql-pooler but the instance has no managed pooling")
        direct[fn.name] = fn
        consumers.append(Consumer(fn.name, (fn.max_instances + extra) * fn.connections, f"{arithmetic} (direct)"))
    if pooled and db.pooling:
        consumers.append(_pool_consumer(db))
    if not functions:
        notes.append("  no function found (pass --function NAME)")
    result = tally(limits, consumers)
    print(f"surge headroom: {SURGE_RULE}")
    print("\n".join(result.lines() + notes))
    if unbounded:
        print(
            f"FAIL: {', '.join(unbounded)} set(s) no maxInstanceCount: the fan-out is bounded only by quota; set "
            "max_instance_count (lambdapool plan --platform gcp says the largest that fits)"
        )
        return 1
    print(_verdict(result, direct))
    return 0 if result.fits else 1
