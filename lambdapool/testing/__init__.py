"""Test tools for lambdapool and for users' own handlers: throwaway Postgres and PgBouncer, moto,
TLS helpers and a pytest plugin. The local proxy (:mod:`lambdapool.proxy`) and the emulator
(:mod:`lambdapool.emulator`) are product code; ``LocalProxy`` is re-exported here for tests.
Nothing here is imported by ``import lambdapool``."""

from lambdapool.proxy import LocalProxy
from lambdapool.testing.postgres import (
    ExternalPostgres,
    PostgresNotFound,
    PostgresServer,
    find_bin_dir,
    free_port,
    postgres_from_env,
)
from lambdapool.waiting import WaitTimeout, wait_for

__all__ = [
    "ExternalPostgres",
    "LocalProxy",
    "PostgresNotFound",
    "PostgresServer",
    "WaitTimeout",
    "find_bin_dir",
    "free_port",
    "postgres_from_env",
    "wait_for",
]
