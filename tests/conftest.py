"""Shared test setup. Postgres, moto and AWS fixtures come from the ``lambdapool`` pytest plugin
(lambdapool/tools/testing/pytest_plugin.py, loaded by `-p lambdapool.testing` in pyproject.toml's addopts), the
same ones users get; ``make_db`` is ours."""

from tests.support import make_db  # noqa: F401  (a fixture)
