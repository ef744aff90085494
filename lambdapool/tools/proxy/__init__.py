"""The local proxy: a Postgres-protocol pooler that behaves like RDS Proxy, for tests and emulation.

Modules, one concept each. Without I/O: ``session`` (one client's relay as a state machine:
events in, actions out), ``backend_state`` (what a backend owes and holds), ``shared`` (counters,
statement names, pin cache), ``pinning`` (which SQL needs a session), ``startup_settings``,
``rds_errors`` and ``cloud_sql_errors`` (the refusals a real RDS Proxy or Cloud SQL sends),
``admin`` (SHOW POOLS / SHOW STATS), ``config``, ``auth`` (SCRAM, RDS IAM and Cloud SQL tokens),
``roles`` (which server a backend may be on: writer, reader, ``target_session_attrs``).
The asyncio drivers: ``client`` / ``backend`` (the two sides of a relay, thin around the
above), ``pool`` (cap and fair wait queue; it sees clients through ``interfaces``), ``server``
(the asyncio core), ``local`` (:class:`LocalProxy`, the public API). The wire protocol itself is
parsed by :mod:`lambdapool.tools.proto`, which does no I/O either.
"""

from lambdapool.tools.proxy.local import LocalProxy

__all__ = ["LocalProxy"]
