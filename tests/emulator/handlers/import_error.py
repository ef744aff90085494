"""A handler module that cannot be imported: the runtime reports an init error."""

import lambdapool_emulator_no_such_module  # noqa: F401


def handler(event, context):
    return "unreachable"
