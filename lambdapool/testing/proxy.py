"""The local proxy moved to :mod:`lambdapool.proxy`; ``lambdapool.testing.proxy.LocalProxy`` keeps working."""

from lambdapool.proxy import LocalProxy

__all__ = ["LocalProxy"]
