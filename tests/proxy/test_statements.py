"""Protocol-level prepared statements, driven straight through libpq (psycopg.pq), at random.

Three libpq connections share two backends, so statements are prepared, executed, described
and closed on whichever backend is free. The proxy runs in its own process (the CLI): libpq's
blocking calls hold the GIL, which would stall a proxy thread in this process.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

from lambdapool.testing import free_port

NAMES = [f"stmt_{i}".encode() for i in range(6)]


def test_random_prepare_execute_describe_close_across_backends(proxy_pg):
    from psycopg import pq

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lambdapool", "proxy", "--listen", f"127.0.0.1:{port}", "--max-backends", "2",
         "--status-interval", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "LAMBDAPOOL_PROXY_BACKEND": proxy_pg.dsn},
    )  # fmt: skip
    try:
        assert "listening on" in proc.stdout.readline()  # type: ignore[union-attr]
        conns = [
            pq.PGconn.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres".encode()) for _ in range(3)
        ]
        assert all(c.status == pq.ConnStatus.OK for c in conns), [c.error_message for c in conns]
        live: list[dict[bytes, int]] = [{} for _ in conns]  # name -> k of "SELECT $1::int + k"
        rng = random.Random(20261122)
        counts = dict.fromkeys(("prepare", "execute", "missing", "describe", "close", "unnamed"), 0)
        # A fourth connection opens and closes transactions at random: while it holds one
        # backend the others must use the other, so statements meet backends that lack them.
        holder = pq.PGconn.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres".encode())
        holding = False
        for step in range(400):
            if rng.random() < 0.2:
                res = holder.exec_(b"COMMIT" if holding else b"BEGIN; SELECT 1")
                assert res.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK), res.error_message
                holding = not holding
            i = rng.randrange(len(conns))
            conn, mine = conns[i], live[i]
            name = rng.choice(NAMES)
            op = rng.choice(["prepare", "execute", "execute", "describe", "close", "unnamed"])
            if op == "prepare" and name not in mine:
                # Half shared queries (backends share the proxy's statements), half unique
                # ones (prepared on one backend only, so they must be re-prepared elsewhere).
                k = rng.randrange(3) if rng.random() < 0.5 else 1000 + step
                res = conn.prepare(name, f"SELECT $1::int + {k}".encode(), [23])
                assert res.status == pq.ExecStatus.COMMAND_OK, (step, res.error_message)
                mine[name] = k
            elif op in ("execute", "prepare"):
                n = rng.randrange(1000)
                res = conn.exec_prepared(name, [str(n).encode()])
                if name in mine:
                    assert res.status == pq.ExecStatus.TUPLES_OK, (step, res.error_message)
                    assert res.get_value(0, 0) == str(n + mine[name]).encode()
                else:
                    op = "missing"
                    assert res.status == pq.ExecStatus.FATAL_ERROR
                    assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"26000", res.error_message
            elif op == "describe" and name in mine:
                res = conn.describe_prepared(name)
                assert res.status == pq.ExecStatus.COMMAND_OK and res.nparams == 1 and res.nfields == 1, (
                    res.error_message
                )
            elif op == "close" and name in mine:
                res = conn.close_prepared(name)
                assert res.status == pq.ExecStatus.COMMAND_OK, (step, res.error_message)
                del mine[name]
            elif op == "unnamed":
                res = conn.exec_params(b"SELECT $1::text || 'x'", [b"ab"])
                assert res.status == pq.ExecStatus.TUPLES_OK and res.get_value(0, 0) == b"abx", res.error_message
            else:
                continue
            counts[op] += 1
        assert all(counts.values()), counts  # every path was taken
        for conn in [*conns, holder]:
            conn.finish()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "pinned 0" in out.splitlines()[-1], out
