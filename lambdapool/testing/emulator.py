"""The emulator moved to :mod:`lambdapool.emulator`; its names keep working from here."""

from lambdapool.emulator import *  # noqa: F403
from lambdapool.emulator import __all__  # noqa: F401
