"""direct: no pooler between the function and Postgres.

Every instance holds its own backend, so a wide fan-out can exhaust ``max_connections``.
The budget guard (issue: adapters) watches for that; this module is the plain path.
"""

from __future__ import annotations

from lambdapool.adapters.base import Adapter


class DirectAdapter(Adapter):
    name = "direct"
