"""CloudWatch Embedded Metric Format: one JSON log line per invocation, no API call.

CloudWatch Logs turns the line into metrics (namespace ``lambdapool``, dimension
``FunctionName``); anything that reads stdout as JSON can use the same figures.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

NAMESPACE = "lambdapool"
UNITS = {
    "ColdStart": "Count",
    "Connects": "Count",
    "Reconnects": "Count",
    "ConnectRetries": "Count",
    "AcquireMs": "Milliseconds",
    "ConnectMs": "Milliseconds",
}


def emf_record(function: str, figures: dict[str, float], properties: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [["FunctionName"]],
                    "Metrics": [{"Name": name, "Unit": UNITS[name]} for name in figures],
                }
            ],
        },
        "FunctionName": function,
    }
    record.update(properties)
    record.update(figures)
    return record


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
    sys.stdout.flush()
