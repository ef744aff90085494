"""`lambdapool proxy` in the foreground: status line, real clients, clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lambdapool.testing import free_port
from lambdapool.tools.cli import main
from tests.proxy.conftest import SERVER_PASSWORD


def start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lambdapool", "proxy", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip


def read_banner(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert "listening on" in line, line + proc.stderr.read()  # type: ignore[union-attr]
    return line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_clients_and_stops_cleanly(proxy_pg, sig):
    import psycopg

    port = free_port()
    proc = start_cli("--listen", f"127.0.0.1:{port}", "--max-backends", "2", "--borrow-timeout", "5",
                     "--status-interval", "0.2", env={"LAMBDAPOOL_PROXY_BACKEND": proxy_pg.dsn})  # fmt: skip
    try:
        banner = read_banner(proc)
        assert f"127.0.0.1:{port}" in banner and "max_backends=2" in banner
        assert "server-pw" not in banner  # the backend's password never shows
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        status = proc.stdout.readline()  # type: ignore[union-attr]
        assert "clients" in status and "backends" in status and "transactions" in status
    finally:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err


def test_cli_status_interval_zero_prints_no_status_and_idles(proxy_pg):
    import time

    port = free_port()
    proc = start_cli("--backend", proxy_pg.dsn, "--listen", f"127.0.0.1:{port}", "--status-interval", "0")
    try:
        read_banner(proc)
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu_seconds() -> float:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

        before = cpu_seconds()
        time.sleep(1.0)
        assert cpu_seconds() - before < 0.3  # waiting, not spinning
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.splitlines()[1:] == [line for line in out.splitlines()[1:] if "stopped" in line]  # no status lines


def test_cli_scram_users_and_flag_errors(proxy_pg, capsys):
    import psycopg

    port = free_port()
    proc = start_cli("--backend", proxy_pg.dsn, "--listen", f"127.0.0.1:{port}", "--max-connections-percent", "10",
                     "--auth", "scram", "--user", "app=pw1")  # fmt: skip
    try:
        assert "max_backends=4" in read_banner(proc)  # 10% of max_connections=40
        with psycopg.connect(f"postgresql://app:pw1@127.0.0.1:{port}/postgres") as conn:
            assert conn.execute("SELECT 2").fetchone() == (2,)
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert main(["proxy", "--backend", "mysql://x", "--listen", "127.0.0.1:0"]) == 2
    assert "postgresql://" in capsys.readouterr().err
    assert main(["proxy", "--backend", proxy_pg.dsn, "--auth", "scram", "--user", "nopassword"]) == 2
    assert "NAME=SECRET" in capsys.readouterr().err
    assert main(["proxy", "--backend", proxy_pg.dsn, "--listen", "nowhere"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_cli_refused_first_login_exits_2_with_the_reason_and_no_traceback(proxy_pg):
    # Before: the failed backend's connection_lost reached for the pool, which start() had not
    # made yet, and asyncio printed "AttributeError: 'NoneType' object has no attribute 'forget'".
    wrong = proxy_pg.dsn.replace(SERVER_PASSWORD, "wrong-pw", 1)
    proc = start_cli("--backend", wrong, "--listen", f"127.0.0.1:{free_port()}")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "password authentication failed" in err and "check the backend DSN" in err
    assert "Traceback" not in err and "Exception in callback" not in err, err
    assert "wrong-pw" not in err + out


def test_local_proxy_refused_first_login_logs_no_error(proxy_pg, caplog):
    import logging

    import lambdapool
    from lambdapool.testing import LocalProxy

    caplog.set_level(logging.DEBUG)
    with pytest.raises(lambdapool.ConnectionUnavailable, match="password authentication failed"):
        LocalProxy(proxy_pg.dsn.replace(SERVER_PASSWORD, "wrong-pw", 1)).start()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
