"""`lambdapool package`: a deployment zip whose handler runs on the function's runtime.

The x86_64 zip is built by the command exactly as a user types it, unpacked, and its handler run
by a Python 3.12 interpreter that sees nothing but the zip (no site-packages; psycopg may use
only its binary wheel, as on Lambda, where there is no system libpq) against a real Postgres.
The other builds share one lambdapool wheel (``--lambdapool``), built once from a copy of the
checkout. pip downloads from PyPI into its own cache; the module takes about 30 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lambdapool import ConfigError
from lambdapool.tools.cli import main, packaging
from lambdapool.tools.testing.pytest_plugin import missing

ROOT = Path(__file__).resolve().parents[2]
HANDLER = ROOT / "examples" / "lambda_psycopg" / "handler.py"
ELF_MACHINES = {62: "x86_64", 183: "aarch64"}  # e_machine in the ELF header
PY312_X86 = ["--runtime", "python3.12", "--arch", "x86_64"]


def python312() -> Path:
    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parents[1].name))

    found = sorted(Path.home().glob(".pyenv/versions/3.12.*/bin/python3.12"), key=version)
    if not found:
        missing("Python 3.12", "no ~/.pyenv/versions/3.12.*/bin/python3.12 to run a python3.12 Lambda zip")
    return found[-1]


def names(zip_path: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as zf:
        return zf.namelist()


def wheel_tags(zip_path: Path) -> dict[str, list[str]]:
    """dist-info directory -> the Tag lines of its WHEEL file."""
    with zipfile.ZipFile(zip_path) as zf:
        return {
            name.rsplit("/", 2)[-2]: re.findall(r"(?m)^Tag: (\S+)", zf.read(name).decode())
            for name in zf.namelist()
            if name.endswith(".dist-info/WHEEL")
        }


def machines(zip_path: Path) -> dict[str, str]:
    """Every shared library in the zip -> the machine its ELF header names."""
    found = {}
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            if ".so" in name.rsplit("/", 1)[-1]:
                head = zf.read(name)[:20]
                assert head[:4] == b"\x7fELF", name
                found[name] = ELF_MACHINES.get(int.from_bytes(head[18:20], "little"), "other")
    return found


def loadable(tag: str, python: str, machine: str, glibc: int) -> bool:
    """A wheel tag the runtime loads: pure Python, or its CPython (or the stable ABI of an older
    one) on a manylinux policy up to its glibc."""
    interpreter, abi, platform = tag.split("-")
    if platform == "any":
        return any(i.startswith("py3") or i == f"cp{python.replace('.', '')}" for i in interpreter.split("."))
    policy = re.fullmatch(rf"manylinux_2_(\d+)_{machine}|(manylinux2014|manylinux2010|manylinux1)_{machine}", platform)
    if not policy:
        return False
    needs = (
        int(policy.group(1))
        if policy.group(1)
        else {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}[policy.group(2)]
    )
    minor = int(python.split(".")[1])
    cpython = re.fullmatch(r"cp3(\d+)", interpreter)
    runs = cpython is not None and (
        int(cpython.group(1)) == minor or (abi == "abi3" and int(cpython.group(1)) <= minor)
    )
    return runs and abi in (interpreter, "abi3", "none") and needs <= glibc


def package(capsys, *args: str | Path) -> tuple[int, str, str]:
    code = main(["package", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def x86_zip(tmp_path_factory) -> tuple[Path, str]:
    """The zip of the issue's own command, run from outside, from this checkout."""
    out = tmp_path_factory.mktemp("x86")
    command = [sys.executable, "-m", "lambdapool", "package", str(HANDLER), *PY312_X86, "-o", "app.zip"]
    done = subprocess.run(command, cwd=out, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return out / "app.zip", done.stdout


@pytest.fixture(scope="module")
def stale_checkout(tmp_path_factory) -> Path:
    """A copy of this checkout whose setuptools build/ dir holds a module that no longer exists."""
    copy = tmp_path_factory.mktemp("checkout") / "lambdapool"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".*", "__pycache__", "*.egg-info", "tests"))
    stale = copy / "build" / "lib" / "lambdapool" / "stale_leftover.py"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("REMOVED_LONG_AGO = True\n")
    return copy


@pytest.fixture(scope="module")
def wheel(stale_checkout, tmp_path_factory) -> Path:
    return packaging.build_wheel(stale_checkout, tmp_path_factory.mktemp("wheel"))


def test_the_x86_64_zip_runs_its_handler_on_python_3_12_without_a_system_libpq(x86_zip, pg_server, tmp_path):
    # GIVEN the zip, unpacked as Lambda does into its task directory
    zip_path, _ = x86_zip
    task = tmp_path / "task"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(task)
    # AND a driver that imports the handler as the runtime would and invokes it twice
    driver = tmp_path / "invoke.py"
    driver.write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(task)!r})\n"
        "import handler, psycopg\n"
        "class Context:\n"
        "    aws_request_id = 'req-1'\n"
        "    def get_remaining_time_in_millis(self):\n"
        "        return 30000\n"
        "results = [handler.handler({'n': 41}, Context()), handler.handler({'n': 1}, Context())]\n"
        "print(json.dumps({'results': results, 'psycopg': psycopg.__file__, 'impl': psycopg.pq.__impl__,\n"
        "                  'path': sys.path}))\n"
    )
    # WHEN Python 3.12 runs it seeing only the zip and the standard library (-I -S: no
    # site-packages, no PYTHON* variables), psycopg limited to its binary wheel
    env = {"PATH": os.environ["PATH"], "PSYCOPG_IMPL": "binary", "LAMBDAPOOL_DSN": pg_server.dsn}
    command = [str(python312()), "-I", "-S", str(driver)]
    done = subprocess.run(command, cwd=task, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    # THEN the handler answers from the database, and the second invocation reuses the warm connection
    first, second = seen["results"]
    assert (first["result"], first["cold_start"], first["invocation"]) == (42, True, 1)
    assert (second["result"], second["cold_start"], second["invocation"]) == (2, False, 2)
    assert first["backend_pid"] == second["backend_pid"]
    # AND psycopg came from the zip, with the libpq its wheel carries
    assert seen["psycopg"].startswith(str(task)) and seen["impl"] == "binary"
    assert not [p for p in seen["path"] if "site-packages" in p]


def test_the_x86_64_zip_holds_wheels_for_the_runtime_and_nothing_else(x86_zip):
    zip_path, out = x86_zip
    entries = names(zip_path)
    tops = {name.split("/")[0] for name in entries}
    assert "handler.py" in tops and "lambdapool" in tops and "psycopg_binary" in tops
    # nothing the runtime has, no scripts, no bytecode of the building machine's Python
    assert not {"boto3", "botocore", "bin", "build"} & tops
    assert not [n for n in entries if "__pycache__" in n or n.endswith(".pyc")]
    tags = wheel_tags(zip_path)
    assert tags and all(loadable(t, "3.12", "x86_64", 34) for ts in tags.values() for t in ts), tags
    assert any("cp312-cp312-manylinux" in t for t in tags[next(k for k in tags if k.startswith("psycopg_binary"))])
    assert set(machines(zip_path).values()) == {"x86_64"}
    # AND the size is shown against Lambda's limits
    assert "python3.12 x86_64 (Amazon Linux 2023, glibc 2.34)" in out
    assert re.search(r"app\.zip: [\d.]+ MB zipped \(Lambda takes up to 50 MB.*[\d.]+ MB unzipped \(up to 250 MB", out)


def test_the_arm64_zip_carries_aarch64_wheels_the_runtime_loads(wheel, tmp_path, capsys):
    arm64 = ["--runtime", "python3.12", "--arch", "arm64"]
    code, _, err = package(capsys, HANDLER, *arm64, "-o", tmp_path / "app.zip", "--lambdapool", wheel)
    assert code == 0, err
    tags = wheel_tags(tmp_path / "app.zip")
    binary = [t for ts in tags.values() for t in ts if not t.endswith("-any")]
    assert binary and all(t.endswith("_aarch64") for t in binary), tags
    assert all(loadable(t, "3.12", "aarch64", 34) for ts in tags.values() for t in ts), tags
    so = machines(tmp_path / "app.zip")
    assert so and set(so.values()) == {"aarch64"}, so


def test_lambdapools_wheel_is_built_from_the_checkouts_sources_only(wheel):
    # setuptools packs whatever its build/lib holds: built in place, the stale module would ship
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.startswith("lambdapool/") and n.endswith(".py")}
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "lambdapool").rglob("*.py")}
    assert "lambdapool/stale_leftover.py" not in shipped
    assert expected <= shipped and all(n in expected or n.startswith("lambdapool/adapters/") for n in shipped)


def test_a_zip_built_twice_holds_no_stale_file(wheel, tmp_path, capsys):
    # GIVEN sources with a module that is then deleted
    src = tmp_path / "src"
    src.mkdir()
    (src / "app.py").write_text("def handler(event, context):\n    return 'ok'\n")
    (src / "old_helper.py").write_text("X = 1\n")
    output = tmp_path / "app.zip"
    build = [f"{src}/", *PY312_X86, "-o", output, "--extras", "none", "--lambdapool", wheel]
    code, _, err = package(capsys, *build)
    assert code == 0, err
    assert {"app.py", "old_helper.py"} <= set(names(output))
    # WHEN the zip is built again, to the same file, after the module is deleted
    (src / "old_helper.py").unlink()
    code, _, err = package(capsys, *build)
    assert code == 0, err
    # THEN the deleted module is not in it
    entries = names(output)
    assert "app.py" in entries and "old_helper.py" not in entries and "lambdapool/__init__.py" in entries


def test_a_dependency_without_a_wheel_for_the_target_is_refused(wheel, tmp_path, capsys):
    # psycopg2 (not psycopg2-binary) publishes no Linux wheel: pip would compile it here, for this machine
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("psycopg2==2.9.10\n")
    build = [HANDLER, *PY312_X86, "-o", tmp_path / "app.zip", "--requirements", requirements, "--lambdapool", wheel]
    code, _, err = package(capsys, *build)
    assert code == 2
    assert "no wheel of psycopg2==2.9.10 for python3.12 x86_64 (Amazon Linux 2023, glibc 2.34)" in err
    assert "CPython 3.12 wheels tagged manylinux_2_34_x86_64 or older, or pure Python" in err
    assert not (tmp_path / "app.zip").exists()


def test_markers_are_the_runtimes_and_a_layer_is_under_python(wheel, tmp_path, capsys):
    # GIVEN requirements that only the target (python3.13 on aarch64 Linux) takes, built on
    # another Python and machine: pip alone would judge the markers by this machine
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        'tomli==2.0.1 ; python_version >= "3.13"\n'
        'six==1.16.0 ; platform_machine == "aarch64"\n'
        'colorama==0.4.6 ; sys_platform == "win32"\n'
    )
    shared = tmp_path / "shared.py"
    shared.write_text("VALUE = 1\n")
    py313_arm64 = ["--runtime", "python3.13", "--arch", "arm64", "--extras", "none", "--requirements", requirements]
    code, _, err = package(capsys, shared, "--layer", *py313_arm64, "-o", tmp_path / "layer.zip", "--lambdapool", wheel)
    assert code == 0, err
    entries = names(tmp_path / "layer.zip")
    assert all(n.startswith("python/") for n in entries)
    tops = {n.split("/")[1] for n in entries}
    assert {"shared.py", "lambdapool", "tomli", "six.py"} <= tops and "colorama" not in tops


def test_the_aws_sdk_is_left_to_the_runtime(wheel, tmp_path, capsys):
    # (jmespath stands for the SDK here: installing botocore would take seconds; which SDK
    # packages go is the next test's)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("jmespath==1.0.1\n")
    build = [*PY312_X86, "--layer", "-o", tmp_path / "layer.zip", "--extras", "none", "--requirements", requirements]
    build += ["--lambdapool", wheel]
    code, out, err = package(capsys, *build)
    assert code == 0, err
    assert not [n for n in names(tmp_path / "layer.zip") if n.startswith("python/jmespath")]
    assert "left out, the runtime has them (--include-aws-sdk to ship your own): jmespath 1.0.1" in out
    code, out, err = package(capsys, *build, "--include-aws-sdk")
    assert code == 0, err
    assert "python/jmespath/__init__.py" in names(tmp_path / "layer.zip")


def _dist(site: Path, name: str, *requires: str) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    lines = [f"Name: {name}", "Version: 1.0", *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


def test_the_aws_sdk_stays_when_another_package_pins_it(tmp_path):
    sdk = [("boto3", "botocore<1.36", "jmespath", "s3transfer"), ("botocore", "jmespath"), ("s3transfer", "botocore")]
    sdk.append(("jmespath",))
    plain = tmp_path / "plain"
    for dist in sdk:
        _dist(plain, *dist)
    _dist(plain, "lambdapool", 'boto3>=1.34; extra == "aws"')
    _dist(plain, "aws-lambda-powertools", "jmespath<2")  # needs jmespath, not the SDK
    assert packaging.runtime_provided(packaging.installed(plain)) == {"boto3", "botocore", "s3transfer"}
    pinned = tmp_path / "pinned"
    for dist in sdk:
        _dist(pinned, *dist)
    _dist(pinned, "aiobotocore", "botocore<1.35.37,>=1.35.16")  # the runtime's botocore would not match
    assert packaging.runtime_provided(packaging.installed(pinned)) == {"jmespath"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["app.py", "--runtime", "python3.11", "--arch", "x86_64"],
            "--runtime 'python3.11': use the function's Runtime, one of python3.12, python3.13, python3.14",
        ),
        ([*PY312_X86], "no SOURCE: give the handler's files"),
        (["nowhere.py", *PY312_X86], "SOURCE nowhere.py: no such file"),
        (["app.py", *PY312_X86, "--extras", "psycopg,nosuch"], "--extras nosuch: lambdapool has no such extra"),
        (["app.py", *PY312_X86, "--lambdapool", "app.py"], "--lambdapool app.py: expected a lambdapool wheel"),
    ],
)
def test_bad_input_is_refused_naming_the_flag(args, message, wheel, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app.py").write_text("def handler(event, context): ...\n")
    if "--lambdapool" not in args:
        args = [*args, "--lambdapool", str(wheel)]
    code, _, err = package(capsys, *args)
    assert code == 2 and message in err, err
    assert not (tmp_path / "app.zip").exists()


def test_without_a_checkout_the_lambdapool_to_ship_must_be_given(tmp_path, monkeypatch):
    # (as when lambdapool was installed from a wheel: it is not on the package index, and a
    # release of that name there would be someone else's)
    monkeypatch.setattr(packaging, "running_checkout", lambda: None)
    with pytest.raises(ConfigError, match="--lambdapool: this lambdapool is not running from a checkout"):
        packaging.lambdapool_requirement(None, ["psycopg"], tmp_path)


def test_the_templates_take_the_runtime_and_architecture_the_zip_is_built_for(aws_env):
    import hcl2

    from tests.infra.infra_support import SAM_TEMPLATE, TERRAFORM, load_template, translate

    # SAM: a Runtime for each runtime `package` builds for, and the architecture, given to both functions
    template = load_template(SAM_TEMPLATE)
    parameters = template["Parameters"]
    assert parameters["Runtime"]["AllowedValues"] == list(packaging.RUNTIMES)
    assert parameters["Architectures"]["AllowedValues"] == list(packaging.MACHINES)
    assert parameters["Architectures"]["Default"] == "x86_64"
    resources = translate(template)["Resources"]
    for function in ("Function", "ManagedFunction"):
        assert resources[function]["Properties"]["Architectures"] == [{"Ref": "Architectures"}]
    # Terraform: the same choices, validated, on the functions and their capacity providers
    options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    variables = {
        name: body
        for entry in hcl2.loads((TERRAFORM / "variables.tf").read_text(), serialization_options=options)["variable"]
        for name, body in entry.items()
    }
    assert variables["architecture"]["default"] == "x86_64"
    for name, allowed in (("runtime", packaging.RUNTIMES), ("architecture", packaging.MACHINES)):
        condition = variables[name]["validation"][0]["condition"]
        assert re.findall(r'"([\w.]+)"', condition) == list(allowed), condition
    resources = {
        f"{kind}.{name}": inner
        for entry in hcl2.loads((TERRAFORM / "main.tf").read_text(), serialization_options=options)["resource"]
        for kind, body in entry.items()
        for name, inner in body.items()
    }
    assert resources["aws_lambda_function.this"]["architectures"] == ["${var.architecture}"]
    assert resources["aws_lambda_capacity_provider.this"]["instance_requirements"] == [
        {"architectures": ["${var.architecture}"]}
    ]
