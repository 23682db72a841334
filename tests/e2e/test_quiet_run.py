"""The clean run, 2 minutes of it (scripts/quiet_run.py; 10 minutes by hand): steady traffic, a
provider failing 2 % of its calls, a canary, every rule far more sensitive than its default, and
no alert recorded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_two_minutes_of_healthy_traffic_raise_no_alert() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/quiet_run.py", "--minutes", "2", "--rate", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "all delivered; alerts recorded: 0" in done.stdout
