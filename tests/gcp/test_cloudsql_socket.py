"""The ``/cloudsql/PROJECT:REGION:INSTANCE`` socket form of the DSN, every driver, a real Postgres.

Cloud Run functions reach Cloud SQL through a Unix socket at
``/cloudsql/PROJECT:REGION:INSTANCE/.s.PGSQL.5432``. The colons in that path are the trap: a
``host:port`` split would cut it. Here a throwaway cluster listens only on a socket in a
directory named like that (TCP off, port 5432, so the DSN names no port, as on Cloud Run); under
``/cloudsql`` itself when the test may create it (root, as in CI), else under a short temporary
directory (a socket's path must fit ~107 bytes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support import DRIVERS, LambdaContext, query_handler

INSTANCE = "shop-prod:europe-west1:orders"
ON_THE_SOCKET = "SELECT inet_server_addr() IS NULL"  # NULL: not over TCP


def _socket_dir(parent: Path, *, own_parent: bool, instance: str = INSTANCE) -> Path:
    """``parent/PROJECT:REGION:INSTANCE``, made for the server's user (and ``parent`` too if ours)."""
    from lambdapool.testing import PostgresNotFound
    from lambdapool.tools.testing.process import run_as

    user = run_as(PostgresNotFound)  # the server refuses root: it runs as this user
    directory = parent / instance
    directory.mkdir(parents=True)
    for path in (directory, parent) if own_parent else (directory,):
        path.chmod(0o755)
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)
    return directory


def _server(pg_session_factory, directory: Path):
    return pg_session_factory(
        settings={"unix_socket_directories": str(directory), "listen_addresses": "", "port": 5432}
    )


@pytest.fixture(scope="module")
def socket_dir(pg_session_factory):
    """A cluster on ``<short tmp>/cloudsql/PROJECT:REGION:INSTANCE``; yields that directory."""
    root = Path(tempfile.mkdtemp(prefix="lpcs", dir="/tmp"))
    root.chmod(0o755)
    try:
        directory = _socket_dir(root / "cloudsql", own_parent=True)
        server = _server(pg_session_factory, directory)
        yield directory
        server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def dsn_forms(directory: Path) -> dict[str, str]:
    return {
        "uri-query": f"postgresql://postgres@/postgres?host={directory}",
        "key-value": f"host={directory} dbname=postgres user=postgres",
        "uri-encoded-host": f"postgresql://postgres@{quote(str(directory), safe='')}/postgres",
    }


@pytest.mark.parametrize("form", ["uri-query", "key-value", "uri-encoded-host"])
@pytest.mark.parametrize("pooler", ["cloud-sql", "cloud-sql-pooler", "direct"])
@pytest.mark.parametrize("driver", DRIVERS)
def test_the_cloudsql_socket_dsn_connects(socket_dir, make_db, driver, pooler, form):
    dsn = dsn_forms(socket_dir)[form]
    assert str(socket_dir).endswith(f"/cloudsql/{INSTANCE}")
    db = make_db(dsn, driver=driver, pooler=pooler)
    assert db.adapter.base_params().host == str(socket_dir)  # the whole path, colons and all
    assert query_handler(db)({"sql": ON_THE_SOCKET}, LambdaContext()) is True
    assert (socket_dir / ".s.PGSQL.5432").is_socket()


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_literal_cloudsql_path(pg_factory, make_db, driver):
    root = Path("/cloudsql")
    if not os.access(root if root.exists() else root.parent, os.W_OK):
        pytest.skip("cannot create /cloudsql here (not root); the same path under /tmp is tested above")
    instance = f"{INSTANCE}-{os.getpid()}"  # (another test run may be using /cloudsql too)
    made_root = not root.exists()
    server = None
    try:
        root.mkdir(exist_ok=True)
        directory = _socket_dir(root, own_parent=made_root, instance=instance)
        server = _server(pg_factory, directory)
        db = make_db(f"postgresql://postgres@/postgres?host=/cloudsql/{instance}", driver=driver, pooler="cloud-sql")
        assert query_handler(db)({"sql": ON_THE_SOCKET}, LambdaContext()) is True
        db.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root / instance, ignore_errors=True)
        if made_root:
            try:
                root.rmdir()  # only if nothing else is in it
            except OSError:
                pass
