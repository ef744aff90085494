"""`lambdapool package`: the deployment zip (or layer) for a Lambda function's runtime and architecture.

    lambdapool package handler.py --runtime python3.12 --arch arm64 -o app.zip

lambdapool (built from this checkout, or the wheel given), its extras (a driver: psycopg by
default) and the user's requirements are installed from wheels the runtime loads
(lambdapool.tools.cli.packaging); the SOURCE files and directories go to the zip's root. The AWS SDK
the runtime ships is left out. The zip's size is printed against Lambda's limits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lambdapool.errors import ConfigError

HELP = "build a Lambda deployment zip (or layer) with wheels for the function's runtime and architecture"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="your handler's files and directories, copied to the zip's root: a directory keeps its name, "
        "DIR/ (with the slash) gives its contents",
    )
    parser.add_argument("--runtime", required=True, help="the function's Runtime: python3.12, python3.13 or python3.14")
    parser.add_argument("--arch", required=True, choices=("x86_64", "arm64"), help="the function's Architectures")
    parser.add_argument(
        "-o", "--output", type=Path, metavar="ZIP", help="the zip to write (default app.zip, layer.zip with --layer)"
    )
    parser.add_argument("--layer", action="store_true", help="a layer: everything under python/; SOURCE optional")
    parser.add_argument(
        "--extras",
        action="append",
        metavar="EXTRA[,EXTRA]",
        help="lambdapool's extras to install (default psycopg; asyncpg, sqlalchemy...; none for no driver)",
    )
    parser.add_argument(
        "--requirements", action="append", type=Path, default=[], metavar="FILE", help="a pip requirements file"
    )
    parser.add_argument(
        "--include-aws-sdk",
        action="store_true",
        help="ship boto3, botocore, s3transfer and jmespath although the runtime has them (to pin their versions)",
    )
    parser.add_argument(
        "--lambdapool",
        type=Path,
        metavar="PATH",
        help="the lambdapool to ship: a wheel or a checkout (default: the checkout this command runs from)",
    )


def extras(given: list[str] | None) -> list[str]:
    names = [name.strip() for value in (given or ["psycopg"]) for name in value.split(",") if name.strip()]
    return sorted({name for name in names if name != "none"})


def sources(given: list[str], layer: bool) -> list[tuple[Path, str]]:
    """``(path, name in the zip)``: a file or directory under its own name, ``DIR/`` or ``.`` as its contents."""
    if not given and not layer:
        raise ConfigError("no SOURCE: give the handler's files (e.g. app.py), or --layer for a layer of packages only")
    found = []
    for text in given:
        path = Path(text)
        if not path.exists():
            raise ConfigError(f"SOURCE {text}: no such file or directory")
        contents = path.is_dir() and (text.endswith(("/", "/.")) or text == ".")
        found.append((path, "" if contents else path.resolve().name))
    return found


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def run(args: argparse.Namespace) -> int:
    import tempfile

    from lambdapool.tools.cli import packaging

    target = packaging.Target(packaging.runtime(args.runtime), args.arch)
    chosen = extras(args.extras)
    copied = sources(args.sources, args.layer)
    output: Path = args.output or Path("layer.zip" if args.layer else "app.zip")
    if not output.parent.is_dir():
        raise ConfigError(f"-o {output}: the directory {output.parent} does not exist")
    for path in args.requirements:
        if not path.is_file():
            raise ConfigError(f"--requirements {path}: no such file")

    print(f"lambdapool package: {target}", flush=True)
    with tempfile.TemporaryDirectory(prefix="lambdapool-package-") as scratch:
        work = Path(scratch)
        requirements = [packaging.lambdapool_requirement(args.lambdapool, chosen, work)]
        for path in args.requirements:
            requirements += ["--requirement", str(path)]
        site = work / "site"  # empty: nothing from an earlier build can remain
        packaging.install(target, requirements, site)
        dists = packaging.installed(site)
        left_out = set() if args.include_aws_sdk else packaging.runtime_provided(dists)
        for name in left_out:
            packaging.remove(site, dists[name])
        files = packaging.entries(site, copied, "python/" if args.layer else "", output)
        unzipped = packaging.write_zip(output, files)

    shipped = [f"{d.name} {d.version}" for key, d in sorted(dists.items()) if key not in left_out]
    print(f"  installed: {', '.join(shipped)}")
    if left_out:
        gone = ", ".join(f"{dists[key].name} {dists[key].version}" for key in sorted(left_out))
        print(f"  left out, the runtime has them (--include-aws-sdk to ship your own): {gone}")
    if copied:
        print(f"  sources: {', '.join(str(path) for path, _ in copied)}")
    zipped = output.stat().st_size
    print(
        f"{output}: {_mb(zipped)} zipped (Lambda takes up to 50 MB as a direct upload), "
        f"{_mb(unzipped)} unzipped (up to 250 MB with all the function's layers)"
    )
    if zipped > packaging.ZIPPED_LIMIT:
        print(
            f"warning: {output} is over the 50 MB Lambda takes as a direct upload: upload it to S3 "
            "(the templates' CodeS3Bucket / code_s3_bucket)",
            file=sys.stderr,
        )
    if unzipped > packaging.UNZIPPED_LIMIT:
        print(
            f"warning: {output} unzips to over 250 MB, more than Lambda allows for a function and its layers "
            "(even from S3): leave out what the function does not need, or deploy a container image",
            file=sys.stderr,
        )
    return 0
