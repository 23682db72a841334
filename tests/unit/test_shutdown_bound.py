"""A graceful stop that overruns its limit still ends the process (exit 0, logged with stacks)."""

from __future__ import annotations

import subprocess
import sys
import time

SCRIPT = """
import time
from smeg_actors.runtime.logs import configure_logging
from smeg_actors.runtime.serve import within
configure_logging(fmt="json", level="info")
within(0.5, lambda: time.sleep(30))
print("not reached")
"""


def test_a_stop_that_hangs_is_cut_at_its_limit_and_logged() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=20, check=False
    )

    assert time.monotonic() - started < 10
    assert result.returncode == 0
    assert "not reached" not in result.stdout
    assert '"event": "shutdown_overran"' in result.stderr
    assert '"event": "process_exiting"' in result.stderr
    assert "Current state of MainThread" in result.stderr  # every thread's stack, for the post-mortem


def test_a_stop_within_its_limit_returns_normally() -> None:
    from smeg_actors.runtime.serve import within

    done: list[bool] = []
    within(5.0, lambda: done.append(True))
    assert done == [True]
