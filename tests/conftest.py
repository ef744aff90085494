"""Shared test setup. Fixtures for Postgres come from the ``lambdapool`` pytest plugin
(lambdapool/testing/pytest_plugin.py), the same ones users get."""
