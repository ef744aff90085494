"""`lambdapool plan`: flags or a file in, table/JSON/cfn/tfvars out, impossible inputs refused."""

import json
import subprocess
import sys

import hcl2
import pytest

from lambdapool.tools.cli import main


def plan(capsys, *argv):
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_shows_the_arithmetic(capsys):
    code, out, _ = plan(capsys, "--max-connections", "100", "--function", "api=50", "--function", "web=10x4")
    assert code == 0
    assert "usable = max_connections 100 - superuser_reserved 3 - replication 0 - admin 2 = 95" in out
    assert "MaxConnectionsPercent 95, MaxIdleConnectionsPercent 47" in out
    assert "web 10 x 4 conn = 40 through rds-proxy" in out


def test_json_from_a_toml_file_with_flags_overriding(tmp_path, capsys):
    cfg = tmp_path / "plan.toml"
    cfg.write_text(
        'instance_class = "db.t4g.medium"\nadmin = 5\npooler = "pgbouncer"\n'
        '[[functions]]\nname = "api"\nconcurrency = 200\n'
        '[[functions]]\nname = "lmi"\nconcurrency = 4\nprocesses = 8\nconnections = 2\n'
    )
    code, out, _ = plan(capsys, "--config", str(cfg), "--admin", "10", "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["admin"] == 10 and data["max_connections"] == 408
    assert data["pgbouncer"] == {
        "default_pool_size": 395,
        "max_db_connections": 395,
        "max_client_conn": 264,
        "reserve_pool_size": 0,
    }


def test_json_config_file(tmp_path, capsys):
    cfg = tmp_path / "plan.json"
    cfg.write_text(
        json.dumps({"max_connections": 50, "pooler": "direct", "functions": [{"name": "a", "concurrency": 5}]})
    )
    code, out, _ = plan(capsys, "--config", str(cfg), "--format", "json")
    assert code == 0 and json.loads(out)["functions"][0]["largest_concurrency"] == 45


def test_cfn_overrides_and_params_file(capsys):
    argv = ["--max-connections", "100", "--function", "api=50", "--function", "web=10x4"]
    code, out, _ = plan(capsys, *argv, "--format", "cfn", "--stack-function", "web")
    assert code == 0
    assert out.split() == [
        "FunctionName=web",
        "ReservedConcurrency=10",
        "MaxPerInstance=4",
        "MaxConnectionsPercent=95",
        "MaxIdleConnectionsPercent=47",
        "ProxyConnectionsAlarmThreshold=95",
        "DatabaseConnectionsAlarmThreshold=95",
    ]
    code, out, _ = plan(capsys, *argv, "--format", "cfn-json", "--stack-function", "api")
    params = {p["ParameterKey"]: p["ParameterValue"] for p in json.loads(out)}
    assert params["ReservedConcurrency"] == "50" and params["FunctionName"] == "api"
    code, _, err = plan(capsys, *argv, "--format", "cfn")
    assert code == 2 and "--stack-function NAME" in err and "['api', 'web']" in err


def test_tfvars_parse_as_hcl(capsys):
    code, out, _ = plan(
        capsys, "--max-connections", "100", "--function", "api=50", "--function", "cron=5@direct", "--format", "tfvars"
    )
    data = hcl2.loads(out, serialization_options=hcl2.SerializationOptions(strip_string_quotes=True))
    assert code == 0
    assert data["max_connections_percent"] == 90 and data["max_idle_connections_percent"] == 45
    assert data["functions"] == {"api": {"reserved_concurrency": 50, "max_per_instance": 1}}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["--max-connections", "100", "--function", "api=80", "--function", "worker=30", "--pooler", "direct"],
            "worker breaks the budget: the connections overflow by 15",
        ),
        (["--function", "api=1"], "give --max-connections N or --instance-class CLASS"),
        (["--instance-class", "db.t3.micro", "--function", "api"], "expected NAME=CONCURRENCY"),
        (
            ["--max-connections", "100", "--function", "api=1", "--pooler", "direct", "--format", "cfn"],
            "--pooler rds-proxy",
        ),
        (["--max-connections", "10", "--reserved", "8", "--function", "api=1"], "nothing is left"),
        # a bad limit is named by the flag it came from, not by the library's argument name
        (
            ["--max-connections", "100", "--reserved", "-1", "--function", "api=1"],
            "--reserved -1: must be a whole number >= 0",
        ),
        (["--max-connections", "0", "--function", "api=1"], "--max-connections 0: must be a whole number >= 1"),
        (
            ["--instance-class", "db.x9.huge", "--function", "api=1"],
            "give the database's max_connections instead (--max-connections N",
        ),
    ],
)
def test_impossible_inputs_exit_2_with_a_clear_message(capsys, argv, needle):
    code, out, err = plan(capsys, *argv)
    assert code == 2 and out == ""
    assert needle in err and "Traceback" not in err


def test_console_script_refuses_without_traceback():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lambdapool",
            "plan",
            "--max-connections",
            "20",
            "--function",
            "a=30",
            "--pooler",
            "direct",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "a breaks the budget" in out.stderr and "Traceback" not in out.stderr


def test_the_processes_term_is_shown_and_explained(capsys):
    # GIVEN a Managed Instances function: 4 environments x 1 conn x 16 processes, connecting directly
    code, out, _ = plan(
        capsys, "--max-connections", "100", "--function", "api=20", "--function", "worker=4x1x16@direct"
    )
    assert code == 0
    assert "worker 4 environments x 16 processes x 1 conn = 64 (direct)" in out
    assert "processes: worker 4 environments x 16 processes (Lambda Managed Instances)" in out
    assert "16 per vCPU, vCPUs = MemorySize / 1024 / ExecutionEnvironmentMemoryGiBPerVCpu (default 2)" in out
    assert "aws lambda get-function-configuration --function-name NAME" in out
    assert "direct: worker fits up to execution environments 4" in out
    # AND the stack parameters carry the environments and processes to the template
    code, out, _ = plan(capsys, "--max-connections", "400", "--function", "worker=4x1x16", "--format", "cfn")
    assert code == 0 and "ManagedInstancesMaxEnvironments=4" in out and "PerEnvironmentMaxConcurrency=16" in out
    # AND a plan without xPROCS says nothing of processes
    code, out, _ = plan(capsys, "--max-connections", "100", "--function", "api=20")
    assert "processes" not in out


def test_every_option_says_what_it_does():
    from lambdapool.tools.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["plan"]
    for action in sub._actions:
        assert action.help, f"{action.option_strings} has no help"
    out = sub.format_help()
    for fmt in ("table", "json", "cfn", "cfn-json", "tfvars", "pgbouncer"):
        assert f"{fmt} (" in " ".join(out.split()), fmt


def test_a_current_instance_class_plans(capsys):
    code, out, _ = plan(capsys, "--instance-class", "db.r8g.large", "--function", "api=200")
    assert code == 0 and "usable = max_connections 1720 - superuser_reserved 3" in out
