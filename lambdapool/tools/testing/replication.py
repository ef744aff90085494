"""A throwaway primary and hot standby with streaming replication, for failover tests.

``with ReplicatedPostgres() as cluster: cluster.failover()`` plays an Aurora / Multi-AZ failover.

Theory of operation
-------------------
* Two :class:`PostgresServer` clusters (same temp dirs, same unprivileged user, same orphan
  sweep): the primary from ``initdb``, the standby from ``pg_basebackup`` of it, following it
  through ``standby.signal`` and a ``primary_conninfo`` written into ``postgresql.auto.conf``
  (a file, not ``-c``, so a password never shows in ``ps``). ``synchronous_commit`` is on, so
  :meth:`ReplicatedPostgres.wait_replicated` can compare LSNs right after a commit.
* :meth:`ReplicatedPostgres.failover` stops the writer (fast shutdown: its walsender hands the
  standby all the WAL, shutdown checkpoint included), promotes the standby, then restarts the
  old writer *on its old port* as a standby of the new one. That old data dir normally follows
  the new timeline; when it cannot (it wrote WAL the new writer never saw), it is rebuilt from
  a fresh base backup, on the same port.
* :class:`Endpoint` is the cluster's DNS name: a TCP relay whose target is looked up per new
  connection. Failover does not move it (a cached name still leads to the demoted writer);
  the test calls ``endpoint.point_to(cluster.primary)`` when "DNS" catches up.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote

from lambdapool.errors import ConfigError, LambdapoolError
from lambdapool.tools.testing.postgres import (
    SUPERUSER,
    PostgresNotFound,
    PostgresServer,
    PostgresStartError,
    find_bin_dir,
)
from lambdapool.tools.testing.process import preexec, run_as
from lambdapool.tools.waiting import WaitTimeout, wait_for

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Endpoint", "FailoverTimings", "ReplicatedPostgres", "ReplicationError"]

# What a primary and a standby need; the user's ``settings`` win (checked by _check_settings).
REPLICATION_SETTINGS: dict[str, object] = {
    "wal_level": "replica",
    "max_wal_senders": 5,  # a standby, plus the two connections of a pg_basebackup -X stream
    "hot_standby": "on",
    "wal_keep_size": "64MB",  # far more than a test writes between a stop and a rejoin
    "synchronous_commit": "on",  # a commit's WAL is written when it returns: wait_replicated sees it
}

# The old writer's log when it holds WAL the new writer never had: it cannot follow, rebuild it.
DIVERGED = (
    "not in this server's history",
    "forked off current database system timeline",
    "does not contain minimum recovery point",
)


class ReplicationError(LambdapoolError):
    """The replicated cluster is not in a state the asked operation needs."""

    __module__ = "lambdapool.testing"


class HasAddress(Protocol):
    host: str
    port: int


# -- a member of the cluster -----------------------------------------------------------------
@dataclass(repr=False)
class _Member(PostgresServer):
    """A :class:`PostgresServer` that can be made from a base backup and follow another server."""

    name: str = "node"  # its application_name on the writer (pg_stat_replication)
    upstream: PostgresServer | None = None  # set: the data dir comes from pg_basebackup of it

    def __repr__(self) -> str:  # never the password
        role = "standby" if self.upstream is not None else "primary"
        state = "running" if self.running else "stopped"
        return f"<PostgresServer {self.name} {role} {self.host}:{self.port} {state}>"

    def _init_cluster(self) -> None:
        if self.upstream is None:
            super()._init_cluster()
            return
        self.bin_dir = find_bin_dir(self.bin_dir)
        basebackup = os.path.join(self.bin_dir, "pg_basebackup")
        if not os.access(basebackup, os.X_OK):
            raise PostgresNotFound(f"{self.bin_dir} has no pg_basebackup: install the Postgres client tools too")
        self._user = run_as(PostgresNotFound)
        base = self._make_dir(0o755)
        self._chown(base)
        up = self.upstream
        cmd = [basebackup, "-D", str(base / "data"), "-h", up.host, "-p", str(up.port), "-U", SUPERUSER]
        cmd += ["-X", "stream", "--checkpoint=fast", "--no-sync", "--no-manifest", "--no-password"]
        env = dict(os.environ)
        if self.password:
            env["PGPASSWORD"] = self.password
        result = subprocess.run(
            cmd, capture_output=True, text=True, cwd=base, env=env, timeout=120, preexec_fn=preexec(self._user)
        )
        if result.returncode != 0:
            raise PostgresStartError(f"pg_basebackup failed ({result.returncode}): {result.stderr[-2000:]}")
        self.follow(up)

    def follow(self, upstream: PostgresServer) -> None:
        """Make the (stopped) data dir a standby of ``upstream`` from its next start."""
        assert self.base_dir is not None and not self.running
        self.upstream = upstream
        data = self.base_dir / "data"
        conninfo = _conninfo(
            host=upstream.host, port=upstream.port, user=SUPERUSER, application_name=self.name, password=self.password
        )
        auto = data / "postgresql.auto.conf"
        kept = [line for line in auto.read_text().splitlines() if not line.startswith("primary_conninfo")]
        auto.write_text("\n".join([*kept, f"primary_conninfo = {_conf_quote(conninfo)}", ""]))
        (data / "standby.signal").touch()
        for path in (auto, data / "standby.signal"):
            self._chown(path)

    def log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_file, "rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""


def _conninfo(**params: object) -> str:
    """A libpq key=value string; values quoted as libpq wants (backslash before ' and \\)."""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        text = str(value).replace("\\", "\\\\").replace("'", "\\'")
        parts.append(f"{key}='{text}'")
    return " ".join(parts)


def _conf_quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _dsn(host: str, port: int, password: str | None, database: str = "postgres") -> str:
    auth = SUPERUSER + (f":{quote(password, safe='')}" if password else "")
    return f"postgresql://{auth}@{host}:{port}/{database}"


# -- the cluster's name ------------------------------------------------------------------------
class Endpoint:
    """A cluster endpoint name: a TCP relay on ``host`` whose target :meth:`point_to` switches.

    Like a DNS name, the target is looked up when a connection opens: relayed connections stay
    with the server they were opened to. A new connection to a target that is down is accepted
    and closed at once (clients see the server close the connection, not a refusal).
    """

    def __init__(self, *, host: str = "127.0.0.1", password: str | None = None, database: str = "postgres") -> None:
        self.host = host
        self.port = 0
        self._password = password
        self._database = database
        self._target: HasAddress | None = None
        self._address: tuple[str, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        target = f"{self._address[0]}:{self._address[1]}" if self._address else "nowhere"
        return f"<Endpoint {self.host}:{self.port} -> {target} connections={self.connections}>"

    @property
    def dsn(self) -> str:
        """A libpq URI for the superuser, through the relay."""
        return _dsn(self.host, self.port, self._password, self._database)

    @property
    def target(self) -> HasAddress | None:
        """The server new connections go to."""
        return self._target

    @property
    def connections(self) -> int:
        """Relayed connections open now."""
        return len(self._pairs)

    def point_to(self, server: HasAddress) -> None:
        """Send new connections to ``server`` (its address now); open ones stay where they are."""
        self._target, self._address = server, (server.host, server.port)

    def start(self, target: HasAddress) -> Endpoint:
        if self._thread is not None:
            return self
        self.point_to(target)
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="lambdapool-endpoint", daemon=True)
        self._thread.start()
        self.port = self._call(self._listen())
        return self

    def drop_all(self) -> int:
        """Close every relayed connection now (a reset to the client, EOF to the server), as a hard
        network drop looks to clients; returns how many were closed."""
        if self._loop is None:
            return 0
        return self._call(self._drop_all())

    def stop(self) -> None:
        """Close the listener and every relayed connection; end the relay's thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            self._loop = self._thread = None

    # -- in the relay's thread ----------------------------------------------------------------
    def _call(self, coro: Coroutine[object, object, int], timeout: float = 30.0) -> int:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._relay, self.host, self.port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            address = self._address  # looked up once, at connect: later point_to calls do not move it
            assert address is not None
            try:
                server_reader, server_writer = await asyncio.open_connection(*address)
            except OSError:
                client_writer.transport.abort()
                return
            pair = (client_writer, server_writer)
            self._pairs.add(pair)
            try:
                pumps = [
                    asyncio.ensure_future(_pump(client_reader, server_writer)),
                    asyncio.ensure_future(_pump(server_reader, client_writer)),
                ]
                try:
                    await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for pump in pumps:
                        pump.cancel()
                    await asyncio.gather(*pumps, return_exceptions=True)
            finally:
                self._pairs.discard(pair)
                for writer in pair:
                    writer.close()
        finally:
            self._tasks.discard(task)

    async def _drop_all(self) -> int:
        pairs = list(self._pairs)
        self._pairs.clear()  # their relay tasks end on their own when they see the sockets gone
        for client_writer, server_writer in pairs:
            _reset(client_writer)
            server_writer.transport.abort()
        return len(pairs)

    async def _shutdown(self) -> int:
        if self._server is not None:
            self._server.close()
        await self._drop_all()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return 0


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a connection cut by the network ends."""
    sock = writer.transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


# -- the cluster -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FailoverTimings:
    """How long each step of :meth:`ReplicatedPostgres.failover` took, in seconds."""

    stopped: float  # the old writer's fast shutdown
    promoted: float  # the standby's promotion, until it accepts writes
    demoted_back: float | None  # the old writer back as a standby, caught up (None: not asked)
    rebuilt: bool = False  # the old writer could not follow the new timeline: made anew from a base backup


def _check_settings(settings: Mapping[str, object]) -> None:
    if str(settings.get("wal_level", "replica")).lower() == "minimal":
        raise ConfigError("settings={'wal_level': 'minimal'} cannot stream to a standby: leave it out (or 'replica')")
    try:
        senders = int(str(settings.get("max_wal_senders", 5)))
    except ValueError:
        senders = -1
    if senders < 3:
        raise ConfigError(
            f"settings={{'max_wal_senders': {settings['max_wal_senders']!r}}} is too few for a standby and a "
            "base backup: leave it out, or use 3 or more"
        )
    if str(settings.get("hot_standby", "on")).lower() in ("off", "false", "0", "no"):
        raise ConfigError("settings={'hot_standby': 'off'} leaves the standby closed to reads: leave it out")


class ReplicatedPostgres:
    """A primary and a hot standby streaming from it, plus an :class:`Endpoint` that names the writer.

    ``max_connections``, ``password`` (SCRAM for TCP clients and for replication) and
    ``settings`` (``postgresql.conf`` lines) apply to both servers. :attr:`primary` is the
    writer and :attr:`standby` the reader, whatever happened: after :meth:`failover` they swap.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        password: str | None = None,
        settings: Mapping[str, object] | None = None,
        bin_dir: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        _check_settings(settings or {})
        self._members = [
            _Member(
                name=name,
                max_connections=max_connections,
                password=password,
                settings={**REPLICATION_SETTINGS, "cluster_name": name, **(settings or {})},
                bin_dir=bin_dir,
                start_timeout=start_timeout,
            )
            for name in ("node1", "node2")
        ]
        self._writer = 0
        self.endpoint = Endpoint(password=password)

    def __repr__(self) -> str:
        return f"<ReplicatedPostgres primary={self.primary!r} standby={self.standby!r} endpoint={self.endpoint!r}>"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def primary(self) -> PostgresServer:
        """The writer now."""
        return self._members[self._writer]

    @property
    def standby(self) -> PostgresServer:
        """The other server: a hot standby of :attr:`primary` (stopped after ``failover(demoted_returns=False)``)."""
        return self._members[1 - self._writer]

    @property
    def pids(self) -> list[int]:
        """The postmasters running now (for tests that check nothing is left behind)."""
        return [m.pid for m in self._members if m.pid is not None and m.running]

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the primary, make the standby from a base backup of it and wait until it streams."""
        if self.primary.running:
            return self
        try:
            primary, standby = self._members[self._writer], self._members[1 - self._writer]
            primary.start()
            standby.upstream = primary
            standby.start()
            self._wait_streaming(standby, primary, offset=0, timeout=standby.start_timeout)
            self.endpoint.start(primary)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the relay and both servers (immediate shutdown) and remove their dirs."""
        self.endpoint.stop()
        for member in (self.standby, self.primary):
            member.stop(mode="immediate")

    # -- replication ---------------------------------------------------------------------------
    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Wait until the standby has replayed everything the primary has written so far."""
        standby = self._running_standby("wait_replicated()")
        lsn = self.primary.psql("SELECT pg_current_wal_lsn()")
        wait_for(
            lambda: standby.psql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") == "t",
            f"the standby to replay the primary's WAL up to {lsn}",
            timeout,
            interval=0.02,
        )

    def failover(self, *, demoted_returns: bool = True, timeout: float = 30.0) -> FailoverTimings:
        """The Aurora / Multi-AZ failover: stop the writer (fast shutdown: its clients' connections
        drop), promote the standby and wait until it accepts writes; then, if ``demoted_returns``,
        bring the old writer back on its old port as a read-only hot standby of the new one.

        The :attr:`endpoint` does not move: call ``endpoint.point_to(cluster.primary)`` for that.
        """
        old = self._members[self._writer]
        new = self._running_standby("failover()")
        began = time.monotonic()
        old.stop(keep=True, mode="fast")
        stopped = time.monotonic()
        # pg_promote(wait => true) returns once recovery has ended: the server takes writes.
        if new.psql(f"SELECT pg_promote(true, {max(1, int(timeout))})") != "t":
            raise ReplicationError(f"{new!r} was not promoted within {timeout}s: {new._log_tail()}")
        new.upstream = None
        self._writer = self._members.index(new)
        promoted = time.monotonic()
        if not demoted_returns:
            return FailoverTimings(stopped - began, promoted - stopped, None)
        rebuilt = self.rejoin_as_standby(timeout=timeout)
        return FailoverTimings(stopped - began, promoted - stopped, time.monotonic() - promoted, rebuilt)

    def rejoin_as_standby(self, *, timeout: float = 30.0) -> bool:
        """Start the stopped old writer on its old port as a hot standby of :attr:`primary` and
        wait until it has caught up; returns True if its data dir could not follow the new
        timeline and it was rebuilt from a fresh base backup (same port)."""
        member, writer = self._members[1 - self._writer], self._members[self._writer]
        if member.running:
            raise ReplicationError(f"rejoin_as_standby(): {member!r} is running; only a stopped old writer rejoins")
        if member.base_dir is not None and self._try_follow(member, writer, timeout):
            self.wait_replicated(timeout)
            return False
        member.stop(mode="immediate")  # removes the old data dir; the port stays
        member.upstream = writer
        member.start()  # a fresh base backup of the writer, on the old port
        self._wait_streaming(member, writer, offset=0, timeout=timeout)
        self.wait_replicated(timeout)
        return True

    # -- helpers -------------------------------------------------------------------------------
    def _running_standby(self, what: str) -> _Member:
        standby = self._members[1 - self._writer]
        if not standby.running:
            raise ReplicationError(
                f"{what} needs a running standby; {standby!r} is stopped: call rejoin_as_standby() first"
            )
        return standby

    def _try_follow(self, member: _Member, writer: _Member, timeout: float) -> bool:
        """Restart ``member``'s own data dir as a standby of ``writer``; False if it cannot follow."""
        member.follow(writer)
        offset = member.log_size()
        try:
            member._launch_server()
            self._wait_streaming(member, writer, offset, timeout)
        except (PostgresStartError, ReplicationError):
            return False
        return True

    def _wait_streaming(self, member: _Member, writer: PostgresServer, offset: int, timeout: float) -> None:
        """Wait until ``member`` streams ``writer``'s current timeline; ReplicationError as soon as
        its log (from ``offset``) says it cannot follow, or on timeout.

        The timeline matters: an old writer that cannot follow still streams the old timeline up
        to the fork point before it finds out."""
        timeline = int(writer.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")[:8], 16)
        sql = "SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming'"

        def streaming() -> bool:
            log = member.log_since(offset)
            if any(marker in log for marker in DIVERGED):
                raise ReplicationError(f"{member!r} cannot follow {writer!r}: {log[-1500:]}")
            if not member.running:
                raise ReplicationError(f"{member!r} exited: {member._log_tail()}")
            return member.psql(sql) == str(timeline)

        try:
            wait_for(streaming, f"{writer!r} to stream to {member!r}", timeout, interval=0.02)
        except WaitTimeout as exc:
            raise ReplicationError(f"{exc}: {member._log_tail()}") from None
