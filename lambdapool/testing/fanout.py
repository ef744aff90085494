"""The fan-out scenarios moved to :mod:`lambdapool.emulator.fanout`; its names keep working from here."""

from lambdapool.emulator.fanout import *  # noqa: F403
from lambdapool.emulator.fanout import __all__  # noqa: F401
