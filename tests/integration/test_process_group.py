"""``ProcessGroup`` with real child processes: signals passed on, one exit ends all, a common start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from smeg_actors.process_group import ProcessGroup, cpu_count, cpu_quota

ROOT = Path(__file__).resolve().parents[2]

#: A child like ``smeg run``'s: boots (``delay``), waits at the start gate, stops on SIGTERM with 0.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from smeg_actors.process_group import start_gate
    gate = start_gate()
    out = open(sys.argv[1], "a")
    time.sleep(float(sys.argv[2]))
    out.write(f"ready {time.time()}\\n"); out.flush()
    gate()
    out.write(f"go {time.time()}\\n"); out.flush()
    action = sys.argv[3]
    if action.startswith("exit"):
        sys.exit(int(action[4:]))
    if action == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: (out.write("stopped\\n"), out.flush(), os._exit(0)))
    while True:
        time.sleep(0.05)
    """
)


def child(out: Path, delay: float = 0.0, action: str = "run") -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return [sys.executable, "-c", CHILD, str(out), str(delay), action], env


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def signal_self_when(condition: object, signum: int = signal.SIGTERM, timeout: float = 30) -> None:
    """SIGTERM this process (the group's parent) once ``condition()`` holds, from a thread."""

    def wait_then_signal() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not condition():  # type: ignore[operator]
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    threading.Thread(target=wait_then_signal, daemon=True).start()


def test_sigterm_is_passed_on_and_every_child_stops_gracefully_with_0(tmp_path: Path) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]
    group = ProcessGroup([child(out) for out in outs], stop_timeout=10)
    signal_self_when(lambda: all(any(line.startswith("go") for line in lines(o)) for o in outs))
    assert group.run() == 0
    assert all(lines(out)[-1] == "stopped" for out in outs)
    assert all(c.process.returncode == 0 for c in group.children)
    assert group.reason == ""


def test_children_start_consuming_together_once_the_slowest_is_ready(tmp_path: Path) -> None:
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    group = ProcessGroup([child(fast, 0.0), child(slow, 1.5)], stop_timeout=10)
    signal_self_when(
        lambda: any(line.startswith("go") for line in lines(fast) + lines(slow)) and len(lines(slow)) >= 2
    )
    assert group.run() == 0
    stamp = {
        f"{name} {kind}": float(line.split()[1])
        for name, path in (("fast", fast), ("slow", slow))
        for line in lines(path)
        if (kind := line.split()[0]) in ("ready", "go")
    }
    assert stamp["fast go"] >= stamp["slow ready"], stamp
    assert stamp["fast go"] - stamp["fast ready"] >= 1.0, stamp


@pytest.mark.parametrize("code", [4, 5, 6])
def test_a_child_that_exits_by_itself_stops_the_others_and_gives_the_group_its_code(
    tmp_path: Path, code: int
) -> None:
    survivor = tmp_path / "survivor"
    group = ProcessGroup([child(survivor), child(tmp_path / "dying", 0.3, f"exit{code}")], stop_timeout=10)
    started = time.monotonic()
    assert group.run() == code
    assert time.monotonic() - started < 8
    assert lines(survivor)[-1] == "stopped"
    assert "delivery process 1" in group.reason


def test_a_child_killed_by_a_signal_ends_the_group_with_128_plus_the_signal(tmp_path: Path) -> None:
    group = ProcessGroup([child(tmp_path / "a"), child(tmp_path / "b")], stop_timeout=10)

    def kill_second() -> None:
        while not (len(group.children) == 2 and any(line.startswith("go") for line in lines(tmp_path / "b"))):
            time.sleep(0.05)
        group.children[1].process.kill()

    threading.Thread(target=kill_second, daemon=True).start()
    assert group.run() == 128 + signal.SIGKILL
    assert lines(tmp_path / "a")[-1] == "stopped"


def test_a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout(tmp_path: Path) -> None:
    stubborn = tmp_path / "stubborn"
    group = ProcessGroup([child(tmp_path / "a"), child(stubborn, 0, "ignore-term")], stop_timeout=1.0)
    signal_self_when(lambda: any(line.startswith("go") for line in lines(stubborn)))
    started = time.monotonic()
    assert group.run() == 128 + signal.SIGKILL
    assert time.monotonic() - started < 8
    assert all(c.process.poll() is not None for c in group.children)


def test_a_child_stops_by_itself_when_its_parent_is_killed(tmp_path: Path) -> None:
    # Given a parent process whose child watches it (as smeg run's delivery children do)
    out = tmp_path / "child"
    script = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        code = (
            "import sys, time, threading\\n"
            "from smeg_actors.process_group import watch_parent\\n"
            "done = threading.Event()\\n"
            "watch_parent(int(sys.argv[1]), done.set)\\n"
            "open(sys.argv[2], 'a').write('watching\\\\n')\\n"
            "done.wait(30)\\n"
            "open(sys.argv[2], 'a').write('parent gone\\\\n')\\n"
        )
        subprocess.Popen([sys.executable, "-c", code, str(os.getpid()), {str(out)!r}])
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 20
    while "watching" not in lines(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "watching" in lines(out)
    # When
    parent.kill()
    parent.wait()
    # Then
    deadline = time.monotonic() + 5
    while "parent gone" not in lines(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lines(out) == ["watching", "parent gone"]


# --- how many processes ``auto`` means ------------------------------------------------------


def test_auto_is_the_affinity_when_no_cpu_quota_is_set(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_count(tmp_path) == len(os.sched_getaffinity(0))
    assert cpu_quota(tmp_path) is None


@pytest.mark.parametrize(
    ("limit", "expected"), [("150000 100000", 2), ("50000 100000", 1), ("100000 100000", 1)]
)
def test_auto_is_capped_by_a_cgroup_v2_cpu_quota_rounded_up(
    tmp_path: Path, limit: str, expected: int
) -> None:
    (tmp_path / "cpu.max").write_text(limit + "\n")
    assert cpu_count(tmp_path) == min(expected, len(os.sched_getaffinity(0)))


def test_auto_reads_a_cgroup_v1_quota_and_ignores_minus_one(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert cpu_quota(tmp_path) == 1.0
    assert cpu_count(tmp_path) == 1


def test_an_unreadable_or_garbled_quota_means_no_cap(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert cpu_quota(tmp_path) is None
    assert cpu_quota(tmp_path / "missing") is None
