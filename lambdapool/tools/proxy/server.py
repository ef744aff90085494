"""The proxy's asyncio core: listening, the shared state of clients and backends, stats, faults.

Everything here runs on one event loop (``LocalProxy`` gives it its own thread when used from
synchronous code). Protocols (``data_received``) rather than streams carry the bytes: a relay
is mostly callbacks, and they are markedly faster than streams for that.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from typing import Any

from lambdapool.errors import ConnectionUnavailable
from lambdapool.tools.proto import Frame
from lambdapool.tools.proto import messages as m
from lambdapool.tools.proxy import admin, roles
from lambdapool.tools.proxy.auth import ScramVerifier
from lambdapool.tools.proxy.backend import Backend, BackendLoginError
from lambdapool.tools.proxy.backend_state import SYNCED, BackendState
from lambdapool.tools.proxy.client import Client
from lambdapool.tools.proxy.config import BackendTarget, ProxySettings, address
from lambdapool.tools.proxy.pool import Pool, database_away, server_gone
from lambdapool.tools.proxy.rds_errors import ConnectionRate
from lambdapool.tools.proxy.shared import COUNTERS, SharedState

__all__ = ["COUNTERS", "LISTEN_BACKLOG", "ProxyServer"]

LISTEN_BACKLOG = 1024


class _QueryCollector:
    """Owns a backend while it runs one query of the proxy's own; collects what the client would see."""

    def __init__(self, loop: asyncio.AbstractEventLoop, state: BackendState) -> None:
        self.state = state
        self.data: list[bytes] = []
        self.done: asyncio.Future[bytes] = loop.create_future()

    def backend_messages(self, msgs: list[Frame]) -> None:
        if self.state.relay(msgs, self.data, None) & SYNCED and not self.done.done():
            self.done.set_result(b"".join(self.data))

    def backend_lost(self, *, by_proxy: bool, why: str | None = None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("the server closed the connection"))

    def pause_reading(self) -> None:
        pass  # nothing to hold back: the proxy sent its one query

    def resume_reading(self) -> None:
        pass


class ProxyServer:
    def __init__(self, settings: ProxySettings) -> None:
        settings.validate()
        self.settings = settings
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.host, self.port = settings.host, settings.port
        self.clients: set[Client] = set()
        self._by_pid: dict[int, Client] = {}
        self.pool: Pool = None  # type: ignore[assignment]
        self.shared = SharedState()  # what every client's session shares
        self.counters = self.shared.counters
        self.latency = 0.0
        self.hanging = False
        self.iam_throttle: bool | int = False  # fault: refuse IAM logins as "too many competing requests"
        self.rate: ConnectionRate | None = None
        self.ssl_context: ssl.SSLContext | None = None
        self.scram: ScramVerifier | None = None
        self.iam_hosts: set[str] = set()
        self.ca_file: str | None = None
        self.peak_clients = 0
        self.max_wait = 0.0
        self.total_wait = 0.0
        self._listener: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        # The host new backends go to first: the last one found of the role (None while there
        # is none: after a failover, until a host of the DSN answers in the role).
        self.server_address: tuple[str, int] | None = None
        self._last_address: tuple[str, int] | None = None  # for writer_changes

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        settings = self.settings
        if settings.max_connection_rate is not None:
            self.rate = ConnectionRate(settings.max_connection_rate, self.loop.time())
        if settings.tls:
            self._setup_tls()
        if settings.auth == "scram":
            self.scram = ScramVerifier(settings.users)
        target = settings.backend
        try:
            # Any server of the DSN will do to start (its parameters, its max_connections): a
            # writer endpoint may start during a failover, and borrows wait for the writer.
            first, fits = await self._find_backend(target, settings.wanted, keep_unfit=True)
        except (OSError, asyncio.TimeoutError, BackendLoginError, roles.NoServerForRole) as exc:
            raise ConnectionUnavailable(
                f"lambdapool local proxy: cannot open a connection to the backend {target.describe()} as "
                f"{target.user}: {exc or type(exc).__name__}; check the backend DSN"
            ) from None
        self.shared.set_baseline(roles.advertised(first.params, settings.wanted))
        cap = settings.max_backends
        if cap is None:
            max_connections = int(await self.run_query(first, "SHOW max_connections"))
            cap = max(1, int(max_connections * (settings.max_connections_percent or 100) / 100))
        self.pool = Pool(self, cap)
        if fits:
            self.pool.add_connected(first)
        else:
            first.close()
        await self.start_listening()
        loopback = {"localhost", "127.0.0.1"}
        wildcard = loopback | {"::1", socket.gethostname()}
        self.iam_hosts = {self.host} | (
            loopback if self.host in loopback else wildcard if self.host in ("0.0.0.0", "::") else set()
        )
        self._sweeper = self.loop.create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.stop_listening()
        for client in list(self.clients):
            client.abort()
        if self.pool is not None:
            self.pool.shutdown()
            # let cancelled backend connects finish unwinding (closing any socket they opened)
            await asyncio.gather(*self.pool.opening, return_exceptions=True)
        await asyncio.sleep(0)
        if self._tmp is not None:
            self._tmp.cleanup()

    def _setup_tls(self) -> None:
        settings = self.settings
        cert, key = settings.cert_file, settings.key_file
        if not cert:
            from pathlib import Path

            from lambdapool.tools.proxy.tls import write_self_signed

            self._tmp = tempfile.TemporaryDirectory(prefix="lambdapool-proxy-tls-")
            cert, key = str(Path(self._tmp.name, "proxy.crt")), str(Path(self._tmp.name, "proxy.key"))
            write_self_signed(Path(cert), Path(key), self.host)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.ssl_context = ctx
        self.ca_file = cert

    async def start_listening(self) -> None:
        if self._listener is not None:
            return
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        # create_server listens again with its own backlog (100 by default): pass ours, or a
        # burst of a thousand clients overflows the accept queue and their SYNs are dropped.
        self._listener = await self.loop.create_server(lambda: Client(self), sock=sock, backlog=LISTEN_BACKLOG)

    def stop_listening(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # -- backends --------------------------------------------------------------------------
    async def connect_backend(self, *, refuse: bool = False) -> Backend:
        """A logged-in backend on a server of the proxy's role (see :meth:`_find_backend`)."""
        if refuse:
            raise ConnectionRefusedError("new backends are refused (fault injection: refuse_backends)")
        backend, _ = await self._find_backend(self.settings.backend, self.settings.wanted, keep_unfit=False)
        return backend

    async def _find_backend(self, target: BackendTarget, wanted: str, *, keep_unfit: bool) -> tuple[Backend, bool]:
        """Log in to the DSN's hosts in turn (libpq's rule; the last one of the role first) until
        one is of the role ``wanted``; returns the backend and whether it is of the role.

        ``keep_unfit``: failing that, return the first backend that logged in at all. Raises a
        single host's own error, or :class:`~lambdapool.tools.proxy.roles.NoServerForRole` saying
        what each host was.
        """
        tried: list[str] = []
        away = wrong_role = False
        error: Exception | None = None
        fallback: Backend | None = None
        for host in self._host_order(target):
            try:
                backend = await self._login(target, host)
            except Exception as exc:
                if host == self.server_address and server_gone(exc):
                    self._lost_server()
                away = away or database_away(exc)
                error = exc
                tried.append(f"{address(host)} {exc or type(exc).__name__}")
                continue
            if roles.fits(wanted, backend.params):
                if fallback is not None:
                    fallback.close()
                if target is self.settings.backend:  # not retargeted while this login ran
                    self._found_server(host)
                return backend, True
            if host == self.server_address:
                self._lost_server()
            wrong_role = True
            tried.append(f"{address(host)} is {roles.describe(backend.params)}")
            if fallback is None and (keep_unfit or wanted == "prefer-standby"):
                fallback = backend
            else:
                backend.close()
        if fallback is not None:
            fits = wanted == "prefer-standby"  # no standby answered: any server will do
            if fits and target is self.settings.backend:
                self._found_server(fallback.address)
            return fallback, fits
        if error is not None and not wrong_role and len(target.hosts) == 1:
            raise error  # one host, down or refusing us: its own error, as before multi-host DSNs
        # No writer yet may be a failover in progress (a standby about to be promoted); no
        # standby for a reader, with every host answering, is not going to change by waiting.
        transient = away or (wrong_role and wanted in ("read-write", "primary"))
        raise roles.NoServerForRole(
            f"no server of {target.describe()} is {roles.wanted_words(wanted)}: {'; '.join(tried)}",
            transient=transient,
        )

    def _host_order(self, target: BackendTarget) -> tuple[tuple[str, int], ...]:
        hosts, current = target.hosts, self.server_address
        if current is None or current == hosts[0] or current not in hosts:
            return hosts
        return (current, *(h for h in hosts if h != current))

    async def _login(self, target: BackendTarget, host: tuple[str, int]) -> Backend:
        name, port = host
        timeout = self.settings.connect_timeout

        def factory() -> Backend:
            return Backend(self, target, host)

        if name.startswith("/"):  # a Unix socket directory, as libpq
            connect = self.loop.create_unix_connection(factory, f"{name}/.s.PGSQL.{port}")
        else:
            connect = self.loop.create_connection(factory, name, port)
        _transport, backend = await asyncio.wait_for(connect, timeout)
        try:
            await asyncio.wait_for(asyncio.shield(backend.ready), timeout)
        except BaseException:
            backend.close()
            raise
        self.counters["backends_opened"] += 1
        return backend

    def _lost_server(self) -> None:
        """The server new backends went to is gone or no longer of the role: a failover began."""
        if self.server_address is not None:
            self.server_address = None
            self.counters["failovers"] += 1

    def _found_server(self, host: tuple[str, int]) -> None:
        if host != self.server_address:
            if self._last_address is not None and host != self._last_address:
                self.counters["writer_changes"] += 1
            self.server_address = self._last_address = host

    def server_unfit(self, backend: Backend) -> None:
        """A pooled backend's server is no longer of the role (demoted, read-only, refusing
        writes): close its idle backends there, and send new ones looking for another."""
        if backend.address == self.server_address:
            self._lost_server()
        self.pool.close_idle(backend.address)

    def failover(self, target: BackendTarget) -> None:
        """Switch to ``target`` now (the ``failover()`` call): see :meth:`Pool.retarget`."""
        roles.wanted_attrs(self.settings.role, target.target_session_attrs)  # before anything changes
        self.settings.backend = target
        self.counters["failovers"] += 1
        self.server_address = None
        self.pool.retarget(f"failover() to {target.describe()}: the old server is no longer used")

    async def run_query(self, backend: Backend, sql: str) -> str:
        """The first column of the first row of ``sql`` run on an idle ``backend``."""
        collector = _QueryCollector(self.loop, backend.state)
        backend.owner = collector
        backend.state.owe_query()
        backend.write(m.query(sql))
        try:
            data = await asyncio.wait_for(collector.done, self.settings.connect_timeout)
        finally:
            backend.owner = None
        pos = data.index(b"D")
        return m.read_data_row(data[pos + 5 : pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")])[0] or ""

    # -- clients ---------------------------------------------------------------------------
    def new_key(self) -> tuple[int, int]:
        while True:
            pid = secrets.randbits(31) or 1
            if pid not in self._by_pid:
                return pid, secrets.randbits(31)

    def client_connected(self, client: Client) -> None:
        self.clients.add(client)
        self._by_pid[client.pid] = client
        self.counters["clients_total"] += 1
        self.peak_clients = max(self.peak_clients, len(self.clients))

    def client_gone(self, client: Client) -> None:
        self.clients.discard(client)
        self._by_pid.pop(client.pid, None)

    # -- what a client's login checks (handshake.LoginContext) --------------------------------
    @property
    def tls_offered(self) -> bool:
        return self.ssl_context is not None

    def client_count(self) -> int:
        return len(self.clients)

    def take_connection(self) -> bool:
        return self.rate is None or self.rate.take(self.loop.time())

    def note_wait(self, seconds: float) -> None:
        self.total_wait += seconds
        self.max_wait = max(self.max_wait, seconds)

    def cancel(self, pid: int, secret: int) -> None:
        client = self._by_pid.get(pid)
        if client is None or client.secret != secret or client.backend is None:
            return
        backend = client.backend
        self.loop.create_task(self._send_cancel(backend.address, backend.pid, backend.secret))

    async def _send_cancel(self, host: tuple[str, int], pid: int, secret: int) -> None:
        name, port = host
        opening = (
            asyncio.open_unix_connection(f"{name}/.s.PGSQL.{port}")
            if name.startswith("/")
            else asyncio.open_connection(name, port)
        )
        try:
            reader, writer = await asyncio.wait_for(opening, 5)
            writer.write(m.cancel_request(pid, secret))
            await writer.drain()
            await asyncio.wait_for(reader.read(), 5)
            writer.close()
        except (OSError, asyncio.TimeoutError):
            pass

    def admin_answer(self, sql: str) -> tuple[bytes, bytes]:
        return admin.answer(sql, self.stats(), self.settings.backend.database, self.settings.backend.user)

    async def _sweep(self) -> None:
        """Idle-client timeout and backend lifetime, checked a few times per period."""
        settings = self.settings
        periods = [p for p in (settings.idle_client_timeout, settings.backend_max_lifetime) if p]
        interval = min([1.0] + [p / 4 for p in periods])
        while True:
            await asyncio.sleep(interval)
            timeout = settings.idle_client_timeout
            if timeout:
                cutoff = time.monotonic() - timeout
                for client in [c for c in self.clients if c.last_active < cutoff and c.idle]:
                    client.fatal(
                        "57P05",
                        f"lambdapool local proxy: closing the connection after {timeout:g}s idle (idle_client_timeout)",
                    )
            self.pool.sweep()

    # -- observability ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        pool = self.pool
        return {
            "clients": len(self.clients),
            "peak_clients": self.peak_clients,
            "waiting": len(pool.waiters),
            "backends_in_use": pool.in_use,
            "backends_idle": len(pool.idle),
            "backends_connecting": pool.connecting,
            "peak_backends": pool.peak,
            "max_backends": pool.cap,
            "server": address(self.server_address) if self.server_address else None,
            **self.counters,
            "pin_reasons": dict(self.shared.pin_counts),
            "max_wait_seconds": round(self.max_wait, 6),
            "total_wait_seconds": round(self.total_wait, 6),
            "prepared_statements": len(self.shared.statement_names),
            "latency_seconds": self.latency,
            "listening": self._listener is not None,
        }

    # -- faults ----------------------------------------------------------------------------
    def kill_backends(self) -> None:
        self.pool.close_all()

    def drop_clients(self, which: Callable[[Client], bool] | None = None) -> int:
        dropped = [c for c in self.clients if which is None or which(c)]
        for client in dropped:
            client.abort()
        return len(dropped)

    def throttle_iam(self, on: bool | int) -> None:
        """True: refuse IAM logins (before their token is checked) until turned off; an int n:
        the next n of them; False/0: stop."""
        self.iam_throttle = on

    def take_iam_throttle(self) -> bool:
        """Should this IAM login be refused as "too many competing requests"? (counts it down)"""
        on = self.iam_throttle
        if on is False or on == 0:
            return False
        if on is not True:
            self.iam_throttle = on - 1
        self.counters["iam_throttled"] += 1
        return True

    def hang_on_connect(self, on: bool) -> None:
        self.hanging = on
        if not on:
            for client in list(self.clients):
                client.unhang()
