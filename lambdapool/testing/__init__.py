"""Test tools for lambdapool and for users' own handlers: throwaway Postgres, the local proxy,
the emulator and a pytest plugin. Nothing here is imported by ``import lambdapool``."""

from lambdapool.testing.postgres import (
    ExternalPostgres,
    PostgresNotFound,
    PostgresServer,
    find_bin_dir,
    free_port,
    postgres_from_env,
)
from lambdapool.testing.proxy import LocalProxy
from lambdapool.testing.waiting import WaitTimeout, wait_for

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
