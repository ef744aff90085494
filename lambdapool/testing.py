"""Real parts for tests, yours and ours: throwaway Postgres servers (one, or a primary with a
streaming hot standby), PgBouncer, the local proxy, Google's metadata server (for Cloud SQL IAM
logins), and a pytest plugin with fixtures for them.

The plugin is opt-in: an installation of lambdapool with pytest gets no fixture and runs nothing
at session start unless asked, in the top conftest.py or on the command line::

    pytest_plugins = ["lambdapool.testing"]      # or: pytest -p lambdapool.testing

This module is the tools' public face for tests; they live in :mod:`lambdapool.tools`. Nothing
here is imported by ``import lambdapool``.
"""

from lambdapool.tools.proxy import LocalProxy
from lambdapool.tools.testing.metadata import MetadataServer
from lambdapool.tools.testing.pgbouncer import PgBouncer, PgBouncerNotFound, PgBouncerStartError
from lambdapool.tools.testing.postgres import (
    ExternalPostgres,
    PostgresNotFound,
    PostgresServer,
    PostgresStartError,
    find_bin_dir,
    free_port,
    postgres_from_env,
)
from lambdapool.tools.testing.replication import ReplicatedPostgres, ReplicationError
from lambdapool.tools.waiting import WaitTimeout, wait_for

# What `-p lambdapool.testing` (or pytest_plugins naming this module) loads: the fixtures.
pytest_plugins = ["lambdapool.tools.testing.pytest_plugin"]

__all__ = [
    "ExternalPostgres",
    "LocalProxy",
    "MetadataServer",
    "PgBouncer",
    "PgBouncerNotFound",
    "PgBouncerStartError",
    "PostgresNotFound",
    "PostgresServer",
    "PostgresStartError",
    "ReplicatedPostgres",
    "ReplicationError",
    "WaitTimeout",
    "find_bin_dir",
    "free_port",
    "postgres_from_env",
    "wait_for",
]
