"""The `lambdapool` command: one module per sub-command, imported only when it runs.

A sub-command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; heavy imports belong inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> module; a module not (yet) present is simply not offered.
COMMANDS = {
    "proxy": "lambdapool.tools.cli.proxy",
    "emulate": "lambdapool.tools.cli.emulate",
    "demo": "lambdapool.tools.cli.demo",
    "plan": "lambdapool.tools.cli.plan",
    "check": "lambdapool.tools.cli.check",
    "package": "lambdapool.tools.cli.package",
}


def _available() -> dict[str, str]:
    return {name: mod for name, mod in COMMANDS.items() if importlib.util.find_spec(mod) is not None}


def build_parser() -> argparse.ArgumentParser:
    from lambdapool import __version__

    parser = argparse.ArgumentParser(
        prog="lambdapool",
        description="Serverless-aware Postgres connections: warm per instance, routed through a pooler.",
    )
    parser.add_argument("--version", action="version", version=f"lambdapool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in _available().items():
        module = importlib.import_module(modname)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    from lambdapool.errors import LambdapoolError

    try:
        return int(args._run(args) or 0)
    except LambdapoolError as exc:
        print(f"lambdapool {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
