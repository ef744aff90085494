"""Run serverless handlers locally the way the platforms run them, and watch the database.

* :class:`LambdaFleet`: real execution environments under the AWS runtime interface client
  against a local Runtime API, frozen between invocations, reaped when idle.
* :class:`CloudFunctionFleet`: real ``functions-framework`` servers, several requests each.
* :class:`LightFleet`: thousands of simulated instances in one process, for width.
* :class:`BackendSampler` and :class:`Report`: backends over time, latency percentiles,
  a table, JSON and a chart.
"""

from lambdapool.tools.emulator.cloud_functions import CloudFunctionFleet, InstanceInfo
from lambdapool.tools.emulator.lambda_fleet import EnvironmentInfo, EnvironmentStartError, LambdaFleet
from lambdapool.tools.emulator.light import LightContext, LightFleet, module_factory
from lambdapool.tools.emulator.report import Report, Scenario
from lambdapool.tools.emulator.results import THROTTLED, InvocationResult, percentile
from lambdapool.tools.emulator.sampler import BackendSampler, PgBouncerSampler

__all__ = [
    "THROTTLED",
    "BackendSampler",
    "CloudFunctionFleet",
    "EnvironmentInfo",
    "EnvironmentStartError",
    "InstanceInfo",
    "InvocationResult",
    "LambdaFleet",
    "LightContext",
    "LightFleet",
    "PgBouncerSampler",
    "Report",
    "Scenario",
    "module_factory",
    "percentile",
]
