"""A Lambda deployment zip (or layer) for one runtime and architecture, built with pip.

Only wheels, and only those the runtime's Amazon Linux loads (its glibc's manylinux tags, the
runtime's CPython ABI): Lambda cannot compile anything, so a dependency without such a wheel is
refused here rather than shipped broken. The AWS SDK the runtime already has is left out. Every
build starts from an empty staging directory and writes the whole zip anew.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from lambdapool.errors import ConfigError, LambdapoolError

# Lambda's limits (AWS writes "MB" for these binary megabytes): 50 MB zipped for a direct
# upload, 250 MB unzipped for the function and all its layers.
ZIPPED_LIMIT = 50 * 2**20
UNZIPPED_LIMIT = 250 * 2**20

# What every Python runtime already has. boto3, botocore and s3transfer pin one another's
# versions: they stay or go together. jmespath is a plain library botocore uses.
AWS_SDK_CORE = frozenset({"boto3", "botocore", "s3transfer"})
AWS_SDK = AWS_SDK_CORE | {"jmespath"}


class PackageError(LambdapoolError):
    """The package cannot be built as asked; the message says which dependency and what to do."""


@dataclass(frozen=True)
class Runtime:
    name: str  # Lambda's identifier, "python3.12"
    python: str  # "3.12"
    os: str
    glibc: int  # the minor of glibc 2.x: the newest manylinux_2_x the runtime loads


# The runtimes Lambda deploys today. python3.10 and python3.11 ran on Amazon Linux 2 (glibc 2.26)
# and went with it: deprecated 2026-06-30, no creates since 2026-07-31, no code updates since 2026-08-31.
RUNTIMES = {
    r.name: r
    for r in (
        Runtime("python3.12", "3.12", "Amazon Linux 2023", 34),
        Runtime("python3.13", "3.13", "Amazon Linux 2023", 34),
        Runtime("python3.14", "3.14", "Amazon Linux 2023", 34),
    )
}
MACHINES = {"x86_64": "x86_64", "arm64": "aarch64"}  # Lambda's name -> the wheel tags' and uname's


def runtime(name: str) -> Runtime:
    if name in RUNTIMES:
        return RUNTIMES[name]
    raise ConfigError(
        f"--runtime {name!r}: use the function's Runtime, one of {', '.join(RUNTIMES)} (Lambda retired "
        "python3.11 and older with Amazon Linux 2: no creates or code updates since August 2026)"
    )


@dataclass(frozen=True)
class Target:
    runtime: Runtime
    arch: str  # "x86_64" or "arm64", as Lambda's Architectures says

    def __str__(self) -> str:
        return f"{self.runtime.name} {self.arch} ({self.runtime.os}, glibc 2.{self.runtime.glibc})"

    def platforms(self) -> list[str]:
        """Every manylinux tag the runtime loads, newest first (pip matches tags exactly)."""
        machine = MACHINES[self.arch]
        oldest = 5 if machine == "x86_64" else 17  # aarch64 wheels start at manylinux2014
        tags = [f"manylinux_2_{minor}_{machine}" for minor in range(self.runtime.glibc, oldest - 1, -1)]
        legacy = {"x86_64": ["manylinux2014", "manylinux2010", "manylinux1"], "aarch64": ["manylinux2014"]}
        return tags + [f"{name}_{machine}" for name in legacy[machine]]

    def pip_options(self) -> list[str]:
        options = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.runtime.python]
        for tag in self.platforms():
            options += ["--platform", tag]
        return options

    def markers(self) -> dict[str, str]:
        """PEP 508 marker values on the runtime (pip would use the building machine's)."""
        version = f"{self.runtime.python}.0"
        return {
            "python_version": self.runtime.python,
            "python_full_version": version,
            "implementation_name": "cpython",
            "implementation_version": version,
            "platform_python_implementation": "CPython",
            "os_name": "posix",
            "sys_platform": "linux",
            "platform_system": "Linux",
            "platform_machine": MACHINES[self.arch],
        }


# pip evaluates environment markers (`; python_version >= "3.13"`, `; sys_platform == "linux"`)
# against the interpreter running it, whatever --python-version and --platform say
# (pypa/pip#11664): a zip built on a Mac, or on 3.11 for python3.13, would miss dependencies.
# So pip runs with its marker environment replaced by the target's.
_PIP = """
import json, sys
try:
    from pip._vendor.packaging import markers
except ImportError:
    markers = None
target = json.loads(sys.argv[1])
if target and markers is not None and hasattr(markers, "default_environment"):
    host = markers.default_environment
    markers.default_environment = lambda: {**host(), **target}
elif target:
    print("lambdapool package: this pip's markers are evaluated for this machine, not the target", file=sys.stderr)
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def pip(args: list[str], target: Target | None = None) -> subprocess.CompletedProcess[str]:
    import importlib.util

    if importlib.util.find_spec("pip") is None:
        raise PackageError(f"{sys.executable} has no pip: install it (python -m ensurepip) and run this again")
    markers = json.dumps(target.markers() if target else {})
    command = [sys.executable, "-c", _PIP, markers, *args, "--disable-pip-version-check", "--no-input"]
    return subprocess.run(command, capture_output=True, text=True)


def _errors(done: subprocess.CompletedProcess[str], lines: int = 12) -> str:
    """pip's own account of a failure: its ERROR lines and the dependencies it names, else its last lines."""
    text = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    said = [line for line in text if line.startswith("ERROR") or "depends on" in line or "requested" in line]
    return "\n".join((said or text)[-lines:])


# --- lambdapool itself -------------------------------------------------------------------------


def running_checkout() -> Path | None:
    """The source tree this lambdapool runs from (an editable install or a clone), if it is one."""
    import lambdapool

    root = Path(lambdapool.__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(r'(?m)^name\s*=\s*"lambdapool"', pyproject.read_text()):
        return root
    return None


def _not_sources(root: Path) -> Callable[[str, list[str]], set[str]]:
    """copytree's ignore: caches, VCS, virtual environments and old build output."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory) == root
        return {
            n
            for n in names
            if n.startswith(".")
            or n == "__pycache__"
            or n.endswith((".pyc", ".egg-info"))
            or (top and n in ("build", "dist"))
            or (Path(directory, n, "pyvenv.cfg").exists())
        }

    return ignore


def build_wheel(checkout: Path, workdir: Path) -> Path:
    """lambdapool's wheel, built from a copy of ``checkout``: setuptools writes build/ and
    *.egg-info beside the sources and packs whatever build/lib holds, stale modules included."""
    copy = workdir / "lambdapool-source"
    shutil.copytree(checkout, copy, ignore=_not_sources(checkout))
    out = workdir / "lambdapool-wheel"
    done = pip(["wheel", "--no-deps", "--wheel-dir", str(out), str(copy)])
    wheels = sorted(out.glob("lambdapool-*.whl"))
    if done.returncode or not wheels:
        raise PackageError(f"building lambdapool's wheel from {checkout} failed:\n{_errors(done)}")
    return wheels[0]


def wheel_extras(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return set(re.findall(r"(?m)^Provides-Extra: *(\S+)", zf.read(name).decode()))


def lambdapool_requirement(given: Path | None, extras: list[str], workdir: Path) -> str:
    """A pip requirement for lambdapool and its extras: the wheel given, or a wheel built from the
    checkout given (or the one running). Not the package index: lambdapool is not published
    there, and a release of that name would be someone else's."""
    with_extras = f"lambdapool[{','.join(extras)}]" if extras else "lambdapool"
    source = given if given is not None else running_checkout()
    if source is None:
        raise ConfigError(
            "--lambdapool: this lambdapool is not running from a checkout; pass the wheel it was installed from "
            "(python -m build in a clone makes one) or a clone's directory"
        )
    if source.is_dir():
        wheel = build_wheel(source, workdir)
    elif source.is_file() and source.suffix == ".whl":
        wheel = source.resolve()
    else:
        raise ConfigError(f"--lambdapool {source}: expected a lambdapool wheel (.whl) or a checkout directory")
    known = wheel_extras(wheel)
    unknown = sorted(set(extras) - known)
    if unknown:
        have = ", ".join(sorted(known))
        raise ConfigError(f"--extras {','.join(unknown)}: lambdapool has no such extra; it has {have}")
    return f"{with_extras} @ {wheel.as_uri()}"


# --- installing for the target -----------------------------------------------------------------


def install(target: Target, requirements: list[str], site: Path) -> None:
    """pip install into an empty ``site``: wheels for ``target`` only, no bytecode of this
    machine's Python. ``requirements`` are pip arguments: specifiers and ``--requirement FILE``."""
    done = pip(["install", "--target", str(site), "--no-compile", *target.pip_options(), *requirements], target)
    if done.returncode:
        raise _install_error(done, target)


def _install_error(done: subprocess.CompletedProcess[str], target: Target) -> PackageError:
    output = done.stderr + done.stdout
    missing = re.findall(r"No matching distribution found for (\S+)", output)
    # (a resolution that backtracked through every version: "X 3.3.9 depends on psycopg-binary==3.3.9")
    conflict = sorted(set(re.findall(r"depends on ([A-Za-z0-9][A-Za-z0-9._-]*)", output)))
    if missing:
        what = f"no wheel of {', '.join(missing)} for {target}"
    elif "ResolutionImpossible" in output:
        through = f" (through {', '.join(conflict)})" if conflict else ""
        what = f"no set of versions with wheels for {target}{through}"
    else:
        return PackageError(f"pip failed installing for {target}:\n{_errors(done)}")
    accepted = f"CPython {target.runtime.python} wheels tagged {target.platforms()[0]} or older, or pure Python"
    return PackageError(
        f"{what}: the runtime loads {accepted}, and Lambda cannot compile a package from source. Pin a version "
        f"that has such a wheel (--requirements), or use another package.\npip said:\n{_errors(done, 8)}"
    )


# --- what the zip holds ------------------------------------------------------------------------


@dataclass
class Dist:
    name: str
    version: str
    info: Path  # its .dist-info directory
    requires: set[str]  # normalized names it needs whatever extras were asked


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(site: Path) -> dict[str, Dist]:
    dists = {}
    for info in sorted(site.glob("*.dist-info")):
        meta = HeaderParser().parsestr((info / "METADATA").read_text(encoding="utf-8", errors="replace"))
        requires = set()
        for line in meta.get_all("Requires-Dist") or []:
            spec, _, marker = line.partition(";")
            if "extra" not in marker:  # an extra's dependency is there only if asked for
                match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
                if match:
                    requires.add(normalize(match.group(1)))
        dists[normalize(meta["Name"])] = Dist(meta["Name"], meta["Version"], info, requires)
    return dists


def runtime_provided(dists: dict[str, Dist]) -> set[str]:
    """The AWS SDK packages that can be left to the runtime's own copy: not those another package
    in the zip requires (aiobotocore pins botocore: then boto3/botocore/s3transfer all stay)."""
    sdk = set(AWS_SDK) & set(dists)
    needed = {name for key, dist in dists.items() if key not in AWS_SDK for name in dist.requires} & sdk
    if needed & AWS_SDK_CORE:
        needed |= AWS_SDK_CORE & sdk
    return sdk - needed


def remove(site: Path, dist: Dist) -> None:
    """Uninstall one distribution from a --target directory by its RECORD."""
    root = site.resolve()
    for line in (dist.info / "RECORD").read_text().splitlines():
        path = (site / line.split(",")[0]).resolve()
        if path.is_relative_to(root) and path.is_file():
            path.unlink()
    shutil.rmtree(dist.info, ignore_errors=True)
    for directory, _, _ in os.walk(site, topdown=False):  # children first
        if directory != str(site) and not os.listdir(directory):
            os.rmdir(directory)


def _files(root: Path) -> Iterator[Path]:
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(names):
            if not name.endswith(".pyc") and not name.startswith("."):
                yield Path(directory, name)


def entries(site: Path, sources: list[tuple[Path, str]], prefix: str, output: Path) -> dict[str, Path]:
    """Name in the zip -> file: the installed packages (not pip's bin/ scripts), then each source
    ``(path, name)``: a file or directory under ``name``, a directory's contents at the root if
    ``name`` is empty. ``prefix`` is "python/" for a layer."""
    found = {prefix + p.relative_to(site).as_posix(): p for p in _files(site) if p.relative_to(site).parts[0] != "bin"}
    for source, base in sources:
        for path in [source] if source.is_file() else _files(source):
            if path.resolve() == output.resolve():
                continue
            inner = path.relative_to(source).as_posix() if path != source else ""
            name = prefix + "/".join(part for part in (base, inner) if part)
            if name in found:
                raise ConfigError(f"SOURCE {source}: {name} is in the zip already (from a package or another SOURCE)")
            found[name] = path
    return found


def write_zip(output: Path, files: dict[str, Path]) -> int:
    """Write the zip anew (never appended to) and return its unzipped size. Entries are sorted,
    dated 1980 and world-readable (Lambda runs the code as another user), so that the same
    inputs give the same bytes."""
    partial = output.with_name(f".{output.name}.partial")
    unzipped = 0
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(files):
                data = files[name].read_bytes()
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                executable = files[name].stat().st_mode & 0o111
                info.external_attr = (0o100755 if executable else 0o100644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
                unzipped += len(data)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return unzipped
