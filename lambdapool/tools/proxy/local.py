"""``LocalProxy``: the public face of the proxy, for synchronous tests (own thread) and async ones.

``with LocalProxy(backend=dsn, max_backends=10) as proxy:`` starts the proxy on a thread of
its own with its own event loop (uvloop when installed) and stops it on exit;
``async with LocalProxy(...)`` runs it on the caller's loop instead. Fault-injection and stats
methods may be called from any thread: they hop onto the proxy's loop and wait for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from lambdapool.errors import ConfigError
from lambdapool.tools.proxy.config import BackendTarget, ProxySettings, parse_listen
from lambdapool.tools.proxy.roles import wanted_attrs
from lambdapool.tools.proxy.server import ProxyServer

if TYPE_CHECKING:
    from lambdapool.tools.proxy.auth import TokenIssuer


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop if importable (a relay spends its time in callbacks; uvloop makes them cheaper)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LocalProxy:
    """A Postgres-protocol pooler that behaves like RDS Proxy, for tests and emulation.

    Parameters (keyword-only after ``backend``):
        backend: libpq URI or ``key=value`` string of the real server (its password is used only
            by the proxy). Several hosts (``postgresql://u@h1:p1,h2:p2/db``, or ``host=h1,h2``)
            are tried in order for one of the proxy's ``role``, and followed through a failover.
        role: ``"writer"`` (RDS Proxy's read/write endpoint: servers that take writes) or
            ``"reader"`` (a read-only endpoint: hot standbys; a borrow fails at once without one).
        listen: ``HOST:PORT``; port 0 picks a free one (read it back from ``proxy.port``).
        max_backends / max_connections_percent: the cap on server connections, absolute or as
            a share of the server's ``max_connections`` (default 100%, like RDS Proxy).
        borrow_timeout: seconds a client waits for a backend before SQLSTATE 53300.
        idle_client_timeout: close clients idle this long (None: never).
        max_idle_backends, max_client_connections, backend_max_lifetime: further limits.
        max_connection_rate: new client connections a second (RDS Proxy's "Rate of connection
            to proxy exceeded"); None: no limit.
        borrow_on_connect: borrow a backend during each login, as RDS Proxy does, so a full
            pool fails the connect itself after ``borrow_timeout``.
        auth: ``"trust"``, ``"scram"`` (against ``users``), ``"iam"`` (tokens signed with one of
            ``iam_credentials`` = ``{access_key_id: secret_access_key}``, for ``region``) or
            ``"cloud-sql-iam"`` (Cloud SQL's IAM login: the password is an access token that
            ``metadata``, a :class:`~lambdapool.testing.MetadataServer`, issued and still holds
            valid, the user its ``db_user``; refusals read as Cloud SQL's).
        tls / require_tls / cert_file / key_file: TLS for clients (self-signed if no cert given).
        user: the user name put in :attr:`dsn` (default: the first of ``users``, the metadata
            server's ``db_user`` with ``"cloud-sql-iam"``, else the backend's user).
    """

    def __init__(
        self,
        backend: str,
        *,
        listen: str = "127.0.0.1:0",
        max_backends: int | None = None,
        max_connections_percent: float | None = None,
        borrow_timeout: float = 120.0,
        idle_client_timeout: float | None = 1800.0,
        max_idle_backends: int | None = None,
        max_client_connections: int | None = None,
        backend_max_lifetime: float | None = None,
        max_connection_rate: float | None = None,
        borrow_on_connect: bool = False,
        auth: str = "trust",
        users: dict[str, str] | None = None,
        iam_credentials: dict[str, str] | None = None,
        region: str | None = None,
        metadata: TokenIssuer | None = None,
        tls: bool = False,
        require_tls: bool = False,
        cert_file: str | None = None,
        key_file: str | None = None,
        connect_timeout: float = 10.0,
        user: str | None = None,
        role: str = "writer",
    ) -> None:
        host, port = parse_listen(listen)
        target = BackendTarget.from_dsn(backend)
        self.settings = ProxySettings(
            backend=target,
            host=host,
            port=port,
            max_backends=max_backends,
            max_connections_percent=max_connections_percent,
            borrow_timeout=borrow_timeout,
            idle_client_timeout=idle_client_timeout,
            max_idle_backends=max_idle_backends,
            max_client_connections=max_client_connections,
            backend_max_lifetime=backend_max_lifetime,
            max_connection_rate=max_connection_rate,
            borrow_on_connect=borrow_on_connect,
            connect_timeout=connect_timeout,
            auth=auth,
            users=dict(users or {}),
            iam_credentials=dict(iam_credentials or {}),
            region=region,
            metadata=metadata,
            tls=tls,
            require_tls=require_tls,
            cert_file=cert_file,
            key_file=key_file,
            role=role,
        )
        self.settings.validate()
        default_user = metadata.db_user if metadata is not None else target.user
        self.user = user or next(iter(self.settings.users), default_user)
        self._server: ProxyServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = f"{self.host}:{self.port}" if self._server else "stopped"
        role = "" if self.settings.role == "writer" else f" role={self.settings.role}"
        return f"<LocalProxy {state} -> {self.settings.backend.describe()}{role} auth={self.settings.auth}>"

    # -- addresses -------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def port(self) -> int:
        if self._server is None:
            raise ConfigError("LocalProxy.port: the proxy is not started; use start(), `with` or `async with`")
        return self._server.port

    @property
    def dsn(self) -> str:
        """A libpq URI for clients, without a password."""
        query = "?sslmode=require" if self.settings.require_tls else ""
        database = quote(self.settings.backend.database, safe="")
        return f"postgresql://{quote(self.user, safe='')}@{self.host}:{self.port}/{database}{query}"

    @property
    def ca_file(self) -> str | None:
        """The certificate clients can verify the proxy with (when ``tls=True``)."""
        return self._server.ca_file if self._server else None

    # -- lifecycle: own thread -------------------------------------------------------------
    def start(self) -> LocalProxy:
        if self._thread is not None:
            return self
        loop = new_event_loop()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        server = ProxyServer(self.settings)

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(server.start())
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            loop.run_forever()
            loop.run_until_complete(server.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="lambdapool-proxy", daemon=True)
        self._thread.start()
        try:
            started.result()
        except BaseException:
            self._thread.join()
            self._thread = None
            raise
        self._server, self._loop = server, loop
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._thread = None
        self._server = None

    def __enter__(self) -> LocalProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifecycle: caller's loop ----------------------------------------------------------
    async def __aenter__(self) -> LocalProxy:
        server = ProxyServer(self.settings)
        await server.start()
        self._server, self._loop = server, asyncio.get_running_loop()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None

    # -- calls onto the proxy's loop -------------------------------------------------------
    def _call(self, fn: Callable[[ProxyServer], Any]) -> Any:
        server = self._server
        if server is None:
            raise ConfigError("LocalProxy: the proxy is not started; use start(), `with` or `async with`")
        if self._thread is None or threading.current_thread() is self._thread:
            return fn(server)
        future: concurrent.futures.Future = concurrent.futures.Future()

        def call() -> None:
            try:
                result = fn(server)
                if asyncio.iscoroutine(result):
                    task = asyncio.ensure_future(result)
                    task.add_done_callback(
                        lambda t: (
                            future.set_exception(t.exception()) if t.exception() else future.set_result(t.result())
                        )
                    )
                    return
                future.set_result(result)
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(call)  # type: ignore[union-attr]
        return future.result(30)

    def stats(self) -> dict:
        """Counters and gauges; keys are documented in docs/proxy.md."""
        return self._call(lambda s: s.stats())

    def kill_backends(self) -> None:
        """Close every server connection now; clients mid-transaction lose their session."""
        self._call(lambda s: s.kill_backends())

    def refuse_backends(self, on: bool = True) -> None:
        """While on, opening a new backend fails (clients that need one get SQLSTATE 08001)."""
        self._call(lambda s: setattr(s.pool, "refusing", on))

    def set_latency(self, seconds: float) -> None:
        """Delay everything clients send to the server by ``seconds`` (0 to stop)."""
        if seconds < 0:
            raise ConfigError(f"set_latency: seconds must be >= 0, got {seconds!r}")
        self._call(lambda s: setattr(s, "latency", float(seconds)))

    def stop_listening(self) -> None:
        """Refuse new connections (existing ones carry on)."""
        self._call(lambda s: s.stop_listening())

    def start_listening(self) -> Any:
        """Accept connections again on the same port (in ``async with`` mode: await the result)."""
        return self._call(lambda s: s.start_listening())

    def throttle_iam(self, on: bool | int = True) -> None:
        """Refuse IAM logins with RDS Proxy's "The IAM authentication failed because of too many
        competing requests." (before the token is checked): True until turned off, an int n for
        the next n logins, False to stop. Counted in ``stats()["iam_throttled"]``."""
        if isinstance(on, int) and not isinstance(on, bool) and on < 0:
            raise ConfigError(f"throttle_iam: a count must be >= 0, got {on!r}")
        self._call(lambda s: s.throttle_iam(on))

    def hang_on_connect(self, on: bool = True) -> None:
        """While on, new connections are accepted but never answered (a connect timeout test)."""
        self._call(lambda s: s.hang_on_connect(on))

    def failover(self, backend: str) -> None:
        """Switch to another backend DSN now, as RDS Proxy does when its target's writer changes.

        Idle backends to the old target are closed; clients keep their connections, and an
        idle one's next transaction runs on the new target. A client in a transaction (or a
        pinned session, whose state was on the old server) loses its connection with SQLSTATE
        08006, as when the old writer goes away. ``backend`` must name the same database.
        Counted in ``stats()["failovers"]`` (and ``writer_changes`` once a backend opens on
        another server).
        """
        target = BackendTarget.from_dsn(backend)
        wanted_attrs(self.settings.role, target.target_session_attrs)  # a ConfigError here, not on the loop
        current = self.settings.backend.database
        if target.database != current:
            raise ConfigError(
                f"failover: the new backend DSN names database {target.database!r}, but clients are logged in to "
                f"{current!r}: give a DSN for {current!r}"
            )
        self._call(lambda s: s.failover(target))

    def drop_clients(self) -> int:
        """Cut every client connection now; returns how many."""
        return self._call(lambda s: s.drop_clients())
