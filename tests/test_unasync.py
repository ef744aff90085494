"""The sync warm-connection module is generated from the async one and must not drift."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_sync_module_is_up_to_date():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "unasync.py"), "--check"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
