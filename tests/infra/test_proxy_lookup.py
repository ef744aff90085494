"""``proxy_name``: one describe_db_proxies per instance, throttling retried inside the deadline.

RDS's throttling comes from a small HTTP front of our own in front of moto's server: it answers
the first N DescribeDBProxies with the error AWS sends (HTTP 400, the Query protocol's XML), and
forwards everything else to moto. So the real botocore / aiobotocore stack parses a real
response. (Chosen over botocore's Stubber: the Stubber answers inside the client, before the
retry handler and the HTTP layer, it has no aiobotocore counterpart, and it cannot tell that
botocore's own retries are off for this call.)
"""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from lambdapool.credentials import aresolve_proxy_endpoint, resolve_proxy_endpoint
from lambdapool.errors import AuthError, ConnectionUnavailable
from lambdapool.tools.testing.moto import create_db_proxy

ERROR = (
    '<ErrorResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/"><Error><Type>Sender</Type>'
    "<Code>{code}</Code><Message>Rate exceeded</Message></Error><RequestId>0</RequestId></ErrorResponse>"
)


class Front(http.server.ThreadingHTTPServer):
    """Answers DescribeDBProxies with ``code`` ``failures`` times (forever: -1), then forwards."""

    daemon_threads = True

    def __init__(self, moto_url: str, code: str = "Throttling", failures: int = 0, status: int = 400) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.moto_url, self.code, self.failures, self.status = moto_url, code, failures, status
        self.describes = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Front
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        front = self.server
        if b"Action=DescribeDBProxies" in body:
            with front.lock:
                front.describes += 1
                fail = front.failures != 0
                if front.failures > 0:
                    front.failures -= 1
            if fail:
                return self._answer(front.status, ERROR.format(code=front.code).encode())
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        request = urllib.request.Request(front.moto_url + self.path, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            self._answer(response.status, response.read())

    def _answer(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def front(moto_url: str) -> Iterator[Front]:
    create_db_proxy("orders", "orders.proxy-abc.us-east-1.rds.amazonaws.com", endpoint_url=moto_url)
    server = Front(moto_url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("code", ["Throttling", "ThrottlingException", "RequestLimitExceeded"])
def test_throttling_is_retried_until_the_lookup_succeeds(front: Front, code: str) -> None:
    front.code, front.failures = code, 3
    host, port = resolve_proxy_endpoint("orders", "us-east-1", endpoint_url=front.url, deadline=time.monotonic() + 30)
    assert (host, port) == ("orders.proxy-abc.us-east-1.rds.amazonaws.com", 5432)
    assert front.describes == 4  # one request per attempt: botocore's own retries are off


def test_async_lookup_retries_throttling_too(front: Front) -> None:
    front.failures = 2
    found = asyncio.run(
        aresolve_proxy_endpoint("orders", "us-east-1", endpoint_url=front.url, deadline=time.monotonic() + 30)
    )
    assert found == ("orders.proxy-abc.us-east-1.rds.amazonaws.com", 5432) and front.describes == 3


def test_throttling_that_lasts_stops_at_the_deadline_and_names_the_fix(front: Front) -> None:
    front.failures = -1  # throttled for good
    deadline = time.monotonic() + 1.5
    with pytest.raises(ConnectionUnavailable) as caught:
        resolve_proxy_endpoint("orders", "us-east-1", endpoint_url=front.url, deadline=deadline)
    message = str(caught.value)
    assert "throttled rds:DescribeDBProxies (Throttling)" in message and "budget ran out" in message
    assert "LAMBDAPOOL_DSN" in message  # the fix: give the endpoint
    assert front.describes >= 1  # (how many fit in 1.5 s depends on the machine: retrying is tested above)
    assert time.monotonic() < deadline + 1.0  # it never slept past the deadline (the slack: one request)


def test_throttling_that_lasts_stops_at_the_deadline_async(front: Front) -> None:
    front.failures = -1
    with pytest.raises(ConnectionUnavailable, match="budget ran out"):
        asyncio.run(
            aresolve_proxy_endpoint("orders", "us-east-1", endpoint_url=front.url, deadline=time.monotonic() + 1.0)
        )
    assert front.describes >= 1  # (a loaded machine may fit only one in 1 s: retrying is tested above)


def test_access_denied_is_not_retried(front: Front) -> None:
    front.code, front.failures, front.status = "AccessDenied", -1, 403
    with pytest.raises(AuthError, match="rds:DescribeDBProxies"):
        resolve_proxy_endpoint("orders", "us-east-1", endpoint_url=front.url, deadline=time.monotonic() + 30)
    assert front.describes == 1


def test_the_adapter_looks_up_once_per_instance_even_from_threads(front: Front) -> None:
    import lambdapool

    front.failures = 1
    db = lambdapool.Database(
        pooler="rds-proxy",
        proxy_name="orders",
        aws_endpoint_url=front.url,
        user="app",
        region="us-east-1",
        password="pw",
    )
    adapter = db.adapter
    barrier = threading.Barrier(8)
    found: list[object] = []

    def connect_params() -> None:
        barrier.wait()
        found.append(adapter.endpoint())

    threads = [threading.Thread(target=connect_params) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert found == [("orders.proxy-abc.us-east-1.rds.amazonaws.com", 5432)] * 8
    assert front.describes == 2  # one throttled, one answered: the other threads waited for it
    assert adapter.endpoint() == found[0] and front.describes == 2
    db.close()


def test_the_lookup_stops_at_the_invocations_deadline_not_acquire_timeout(front: Front) -> None:
    import lambdapool
    from tests.support import LambdaContext

    front.failures = -1  # throttled for good
    db = lambdapool.Database(pooler="rds-proxy", proxy_name="orders", aws_endpoint_url=front.url, user="app",
                             region="us-east-1", password="pw", acquire_timeout=60)  # fmt: skip

    @db.lambda_handler
    def handler(event: object, context: object) -> None:
        with db.connection():
            pass

    started = time.monotonic()
    with pytest.raises(ConnectionUnavailable, match="budget ran out"):
        handler({}, LambdaContext(remaining_ms=2_000))  # a 2 s Lambda deadline, a 60 s acquire_timeout
    assert time.monotonic() - started < 30  # bounded by the invocation, not by acquire_timeout
    db.close()
