"""The local proxy: a Postgres-protocol pooler that behaves like RDS Proxy, for tests and emulation.

Modules, one concept each: ``config`` (settings), ``auth`` (SCRAM, IAM tokens), ``pinning``
(which SQL needs a session), ``pool`` (cap and fair wait queue), ``client`` / ``backend`` (the
two sides of a relay), ``admin`` (SHOW POOLS / SHOW STATS), ``server`` (the asyncio core),
``local`` (:class:`LocalProxy`, the public API). The wire protocol itself is parsed by
:mod:`lambdapool.proto`, which does no I/O.
"""

from lambdapool.proxy.local import LocalProxy

__all__ = ["LocalProxy"]
