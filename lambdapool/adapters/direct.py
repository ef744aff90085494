"""direct: no pooler; every instance holds its own backend. With the budget guard.

Without a pooler a wide fan-out can hold every ordinary slot of ``max_connections`` warm and
idle while new instances are refused. The guard (serverless-mysql's idea, for Postgres):

* at the end of an invocation, if utilisation (client backends / (max_connections -
  superuser_reserved_connections)) is at or above ``guard_threshold``, close our connection
  instead of keeping it warm, so a waiting instance can have the slot;
* utilisation is sampled with one query, at most every ``guard_sample_interval`` seconds per
  instance (sampling on every invocation is its own load: serverless-mysql#150); a connect
  that needed retries (the server refused us) counts as "full" without a query;
* optionally (``zombie_timeout`` > 0) when full, terminate *our own application's*
  connections idle longer than that (left by instances that were frozen and never came back);
  never another application's: the query matches our ``application_name`` exactly;
* refusals at connect ("too many clients") are retried with jittered backoff inside the
  deadline by the core, for every pooler.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from lambdapool._config import Setting
from lambdapool.adapters.base import Adapter

if TYPE_CHECKING:
    from lambdapool._drivers.contract import AsyncDriver, Connection, Driver

logger = logging.getLogger("lambdapool")

SAMPLE_SQL = (
    "SELECT current_setting('max_connections')::int, "
    "current_setting('superuser_reserved_connections')::int, "
    "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int"
)
ZOMBIE_SQL = (
    "SELECT count(pg_terminate_backend(pid))::int FROM pg_stat_activity "
    "WHERE application_name = %s AND state = 'idle' AND pid <> pg_backend_pid() "
    "AND state_change < now() - make_interval(secs => %s)"
)


class DirectAdapter(Adapter):
    name = "direct"
    OPTIONS = (
        *Adapter.OPTIONS,
        Setting("budget_guard", bool, True, "close our connection after an invocation when the server is nearly full"),
        Setting(
            "guard_threshold", float, 0.8, "utilisation of the ordinary slots at which connections stop being kept warm"
        ),
        Setting(
            "guard_sample_interval", float, 2.0, "seconds between utilisation samples per instance (one query each)"
        ),
        Setting(
            "zombie_timeout",
            float,
            0.0,
            "when full, terminate our own application's connections idle this long (0: never)",
        ),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sample_due = float("-inf")  # time.monotonic() of the next utilisation sample
        self._utilisation = 0.0
        self._ask_from = self._sample_due if self.options["budget_guard"] else float("inf")  # see may_close
        self.samples = 0
        self.zombies_terminated = 0

    # The decision, shared by the sync and async paths.
    def _stale(self) -> bool:
        return time.monotonic() >= self._sample_due

    def _record(self, row: tuple[Any, ...]) -> None:
        max_connections, reserved, used = row
        ordinary = max(1, max_connections - reserved)
        self._utilisation = used / ordinary
        self._sample_due = time.monotonic() + self.options["guard_sample_interval"]
        self.samples += 1
        self._update_ask_from()

    def _full(self, refused: bool) -> bool:
        if refused:  # the server just turned us away: no need to ask
            self._utilisation = max(self._utilisation, 1.0)
            self._sample_due = time.monotonic() + self.options["guard_sample_interval"]
            self._update_ask_from()
        threshold: float = self.options["guard_threshold"]
        return self._utilisation >= threshold

    def _update_ask_from(self) -> None:
        full = self._utilisation >= self.options["guard_threshold"]
        self._ask_from = float("-inf") if full else self._sample_due

    def _zombie_args(self) -> tuple[str, float]:
        return (self.application_name, self.options["zombie_timeout"])

    def may_close(self) -> bool:
        # On every warm invocation's path, so one comparison: from _ask_from on, keep_warm may
        # say no (now, when the server was last seen full; from the next sample otherwise;
        # never with the guard off).
        return time.monotonic() >= self._ask_from

    def keep_warm(self, driver: Driver, conn: Connection, refused: bool) -> bool:
        if not self.options["budget_guard"]:
            return True
        if not refused and self._stale():
            self._record(driver.query_row(conn, SAMPLE_SQL))
        if not self._full(refused):
            return True
        if self.options["zombie_timeout"] > 0:
            self.zombies_terminated += driver.query_row(conn, ZOMBIE_SQL, self._zombie_args())[0]
        return False

    async def akeep_warm(self, driver: AsyncDriver, conn: Connection, refused: bool) -> bool:
        if not self.options["budget_guard"]:
            return True
        if not refused and self._stale():
            self._record(await driver.query_row(conn, SAMPLE_SQL))
        if not self._full(refused):
            return True
        if self.options["zombie_timeout"] > 0:
            self.zombies_terminated += (await driver.query_row(conn, ZOMBIE_SQL, self._zombie_args()))[0]
        return False

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            budget_guard=self.options["budget_guard"],
            last_utilisation=round(self._utilisation, 3),
            samples=self.samples,
            zombies_terminated=self.zombies_terminated,
        )
        return out
