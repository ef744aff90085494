"""Run a light fleet's burst in a process of its own (``python -m tests.fanout.light_child``).

Reads ``{"env", "light", "timeout", "events"}`` as JSON on stdin, writes ``{"results",
"counters"}`` as JSON on stdout. A thousand light instances are a thousand threads contending
for one GIL: in the test process they starved its backend sampler and the process fleet's
Runtime API on a slow two-core VM, so the widest bursts run them here.
"""

from __future__ import annotations

import json
import sys

from lambdapool.tools.emulator import LightFleet, module_factory
from tests.fanout.conftest import HANDLER, HANDLERS


def main() -> None:
    spec = json.load(sys.stdin)
    with LightFleet(module_factory(HANDLERS, HANDLER), env=spec["env"], reserved_concurrency=spec["light"],
                    timeout=spec["timeout"]) as fleet:  # fmt: skip
        results = fleet.burst(spec["events"], concurrency=spec["light"])
        counters = dict(fleet.counters)
    json.dump({"results": [r.to_dict() for r in results], "counters": counters}, sys.stdout)


if __name__ == "__main__":
    main()
