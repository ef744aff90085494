"""From plan to Postgres: the function the template deploys, with the environment moto holds
for it, connects through a proxy that enforces the deployed target group's numbers, and a burst
of every reserved environment at once stays under the real server's max_connections.

RDS Proxy itself cannot run here; the bundled LocalProxy stands in for it (IAM tokens, TLS
required, a cap of MaxConnectionsPercent of the server's max_connections, a borrow timeout),
configured from what `describe_db_proxy_target_groups` returns for the deployed proxy.
"""

from __future__ import annotations

import threading

import boto3
import pytest

import lambdapool
from lambdapool.tools.emulator import BackendSampler
from lambdapool.tools.proxy import LocalProxy
from lambdapool.tools.testing.moto import signing_keys
from tests.infra.infra_support import (
    create_secret,
    deploy_stack,
    plan_parameters,
    proxy_endpoint,
)
from tests.support import LambdaContext

RESERVED = 24


@pytest.mark.slow
def test_burst_of_the_deployed_function_stays_under_max_connections(network, pg_factory, monkeypatch):
    # GIVEN a real server with max_connections 20 and the plan for a function of 24 environments
    pg = pg_factory(max_connections=20)
    params = plan_parameters(["--max-connections", "20", "--function", f"api={RESERVED}"], "api")
    params |= {"DbUser": "postgres", "DbName": "postgres"}
    assert params["MaxConnectionsPercent"] == "75"  # (20 - 3 - 2) * 100 // 20
    # WHEN the stack is deployed (moto) and its proxy stands in front of the server
    deploy_stack("orders", params, network, create_secret("orders-master"))
    pool = boto3.client("rds").describe_db_proxy_target_groups(DBProxyName="orders")["TargetGroups"][0]
    config = pool["ConnectionPoolConfig"]
    lam = boto3.client("lambda")
    assert lam.get_function_concurrency(FunctionName="api")["ReservedConcurrentExecutions"] == RESERVED
    env = {k: str(v) for k, v in lam.get_function_configuration(FunctionName="api")["Environment"]["Variables"].items()}
    with LocalProxy(
        backend=pg.dsn,
        max_connections_percent=config["MaxConnectionsPercent"],
        borrow_timeout=config["ConnectionBorrowTimeout"],
        auth="iam",
        iam_credentials=signing_keys(),
        region="us-east-1",
        tls=True,
        require_tls=True,
    ) as proxy:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.rds.models import rds_backends

        rds_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].db_proxies["orders"].endpoint = proxy.host
        # the deployed environment (the proxy's endpoint in the DSN, no lookup), with what only
        # a test needs: that endpoint made the stand-in's address, and its test CA
        deployed = proxy_endpoint("orders")
        assert env["LAMBDAPOOL_DSN"] == f"postgresql://{deployed}:5432" and "LAMBDAPOOL_PROXY_NAME" not in env
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv(
            "LAMBDAPOOL_DSN", env["LAMBDAPOOL_DSN"].replace(f"{deployed}:5432", f"{proxy.host}:{proxy.port}")
        )
        monkeypatch.setenv("LAMBDAPOOL_SSL_CA_FILE", proxy.ca_file)
        instances = [lambdapool.Database.from_env() for _ in range(RESERVED)]  # one per environment
        try:
            handlers = []
            for db in instances:

                @db.lambda_handler
                def handler(event, context, db=db):
                    with db.connection() as conn:
                        return conn.execute("SELECT pg_sleep(0.1), current_user").fetchone()[1]

                handlers.append(handler)
            barrier = threading.Barrier(RESERVED, timeout=10)
            results: list[object] = []

            def invoke(handler) -> None:
                handler({}, LambdaContext())  # cold start: connect, IAM token, TLS
                barrier.wait()
                try:
                    results.append(handler({}, LambdaContext()))  # everyone at once
                except Exception as exc:
                    results.append(exc)

            with BackendSampler(pg.dsn, interval=0.005) as sampler:
                threads = [threading.Thread(target=invoke, args=(h,)) for h in handlers]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
            stats = proxy.stats()
        finally:
            for db in instances:
                db.close()
    # THEN every invocation is served, and the server never holds more than the proxy's cap
    assert results == ["postgres"] * RESERVED
    cap = 20 * config["MaxConnectionsPercent"] // 100
    print(f"peak backends {sampler.peak}, cap {cap}")
    assert 1 <= sampler.peak <= cap < 20 - 3, (sampler.peak, cap)
    assert stats["auth_failures"] == 0 and stats["pinned_sessions"] == 0
