"""Per-invocation figures: a CloudWatch Embedded Metric Format line, or a Powertools Metrics.

An EMF line is one JSON log line that CloudWatch Logs turns into metrics, with no API call.
Namespace and dimensions follow Powertools' environment (``POWERTOOLS_METRICS_NAMESPACE``,
``POWERTOOLS_SERVICE_NAME``) unless set, so lambdapool's figures sit beside the app's own.
Beside Powertools' ``Metrics``, :class:`PowertoolsSink` adds the figures to it instead, so an
invocation writes one blob and one ColdStart (Powertools' own).
"""

from __future__ import annotations

import json
import os
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


def namespace(setting: str | None) -> str:
    return setting or os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or NAMESPACE


def dimensions(setting: dict[str, str] | None, function: str) -> dict[str, str]:
    if setting is not None:
        return {str(k): str(v) for k, v in setting.items()}
    service = os.environ.get("POWERTOOLS_SERVICE_NAME")
    return {"service": service} if service else {"FunctionName": function}


def emf_record(
    namespace: str, dims: dict[str, str], figures: dict[str, float], properties: dict[str, Any]
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [list(dims)],
                    "Metrics": [{"Name": name, "Unit": UNITS[name]} for name in figures],
                }
            ],
        },
    }
    record.update(dims)
    record.update(properties)
    record.update(figures)
    return record


class EmfSink:
    """Prints one EMF line per invocation on stdout."""

    def __init__(self, namespace: str, dims: dict[str, str]) -> None:
        self.namespace = namespace
        self.dims = dims

    def __call__(self, figures: dict[str, float], properties: dict[str, Any]) -> None:
        line = json.dumps(emf_record(self.namespace, self.dims, figures, properties), separators=(",", ":"))
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class PowertoolsSink:
    """Adds the figures to a Powertools ``Metrics`` (flushed by its ``@log_metrics``). ColdStart
    is left to Powertools (``capture_cold_start_metric=True``), so it is counted once."""

    def __init__(self, metrics: Any) -> None:
        if not callable(getattr(metrics, "add_metric", None)):
            from lambdapool.errors import ConfigError

            raise ConfigError(
                "add_metrics_to() takes a Powertools Metrics object (aws_lambda_powertools.Metrics), "
                f"got {type(metrics).__name__}"
            )
        self.metrics = metrics

    def __call__(self, figures: dict[str, float], properties: dict[str, Any]) -> None:
        for name, value in figures.items():
            if name != "ColdStart":
                self.metrics.add_metric(name=name, unit=UNITS[name], value=value)
