"""``ProcessGroup`` with real child processes: signals passed on, one exit ends all, a common start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from smeg_actors.runtime.process_group import ProcessGroup, cpu_count, cpu_quota
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

#: A child like ``smeg run``'s: boots (``delay``), waits at the start gate, stops on SIGTERM with 0.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from smeg_actors.runtime.process_group import start_gate
    gate = start_gate()
    out = open(sys.argv[1], "a")
    action = sys.argv[3]
    if action == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: (out.write("stopped\\n"), out.flush(), os._exit(0)))
    if action.startswith("early"):
        sys.exit(int(action[5:]))
    time.sleep(float(sys.argv[2]))
    signal.signal(signal.SIGUSR1, lambda *_: (out.write("usr1\\n"), out.flush()))  # once booted
    out.write(f"ready {time.time()}\\n"); out.flush()
    gate()
    out.write(f"go {time.time()}\\n"); out.flush()
    if action.startswith("exit"):
        sys.exit(int(action[4:]))
    while True:
        time.sleep(0.05)
    """
)


def child(out: Path, delay: float = 0.0, action: str = "run") -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return [sys.executable, "-c", CHILD, str(out), str(delay), action], env


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def sigterm_parent() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def run_signalled(
    group: ProcessGroup,
    condition: Callable[[], bool],
    timeout: float = 30,
    then: Callable[[], None] = sigterm_parent,
) -> int:
    """``group.run()``, with ``then`` done (SIGTERM to this process, the group's parent) once
    ``condition()`` holds, but never once ``run`` has returned and its handler is gone. If it does
    not hold within ``timeout``, SIGTERM ends the run and the test fails saying so."""
    done = threading.Event()
    missed: list[Exception] = []

    def wait_then_act() -> None:
        try:
            wait_until(lambda: done.is_set() or condition(), timeout, message="the group never got there")
        except Exception as exc:  # the run must end all the same: a thread's error fails no test
            missed.append(exc)
            if not done.is_set():
                sigterm_parent()
            return
        if not done.is_set():
            then()

    threading.Thread(target=wait_then_act, daemon=True).start()
    try:
        code = group.run()
    finally:
        done.set()
    if missed:
        raise AssertionError(f"before the signal: {missed[0]}")
    return code


def test_sigterm_is_passed_on_and_every_child_stops_gracefully_with_0(tmp_path: Path) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]
    group = ProcessGroup([child(out) for out in outs], stop_timeout=10)
    code = run_signalled(group, lambda: all(any(line.startswith("go") for line in lines(o)) for o in outs))
    assert code == 0
    assert all(lines(out)[-1] == "stopped" for out in outs)
    assert all(c.process.returncode == 0 for c in group.children)
    assert group.reason == ""


def test_children_start_consuming_together_once_the_slowest_is_ready(tmp_path: Path) -> None:
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    group = ProcessGroup([child(fast, 0.0), child(slow, 2.5)], stop_timeout=10)
    code = run_signalled(
        group,
        lambda: any(line.startswith("go") for line in lines(fast) + lines(slow)) and len(lines(slow)) >= 2,
    )
    assert code == 0
    stamp = {
        f"{name} {kind}": float(line.split()[1])
        for name, path in (("fast", fast), ("slow", slow))
        for line in lines(path)
        if (kind := line.split()[0]) in ("ready", "go")
    }
    assert stamp["fast go"] >= stamp["slow ready"], stamp
    assert stamp["fast go"] - stamp["fast ready"] >= 1.0, stamp


def test_sigusr1_reaches_only_the_children_that_said_ready(tmp_path: Path) -> None:
    # Given a child still booting (no SIGUSR1 handler yet: the signal would kill it) and one ready
    ready, booting = tmp_path / "ready", tmp_path / "booting"
    group = ProcessGroup([child(ready, 0.0), child(booting, 3.0)], stop_timeout=10)
    sent = threading.Event()

    def ask_for_thread_dumps() -> bool:
        if not sent.is_set() and group.children and group.children[0].said_ready:
            os.kill(os.getpid(), signal.SIGUSR1)
            sent.set()
        return (
            sent.is_set() and "usr1" in lines(ready) and any(line.startswith("go") for line in lines(booting))
        )

    # When the parent gets SIGUSR1 meanwhile (then SIGTERM once both run)
    code = run_signalled(group, ask_for_thread_dumps)
    # Then the ready child got it, the booting one was spared, and the group stopped cleanly
    assert sent.is_set()
    assert "usr1" in lines(ready) and "usr1" not in lines(booting)
    assert code == 0


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


def test_a_child_that_fails_before_it_is_ready_ends_the_group_without_waiting_for_the_others(
    tmp_path: Path,
) -> None:
    group = ProcessGroup(
        [child(tmp_path / "slow", 20.0), child(tmp_path / "broken", 0, "early3")], stop_timeout=10
    )
    started = time.monotonic()
    assert group.run() == 3
    assert time.monotonic() - started < 8  # not the slow sibling's 20 s of boot
    assert "delivery process 1" in group.reason


def test_a_child_killed_by_a_signal_ends_the_group_with_128_plus_the_signal(tmp_path: Path) -> None:
    group = ProcessGroup([child(tmp_path / "a"), child(tmp_path / "b")], stop_timeout=10)
    code = run_signalled(
        group,
        lambda: len(group.children) == 2 and any(line.startswith("go") for line in lines(tmp_path / "b")),
        then=lambda: group.children[1].process.kill(),
    )
    assert code == 128 + signal.SIGKILL
    assert lines(tmp_path / "a")[-1] == "stopped"


def test_a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout(tmp_path: Path) -> None:
    stubborn = tmp_path / "stubborn"
    group = ProcessGroup([child(tmp_path / "a"), child(stubborn, 0, "ignore-term")], stop_timeout=1.0)
    started = time.monotonic()
    assert (
        run_signalled(group, lambda: any(line.startswith("go") for line in lines(stubborn)))
        == 128 + signal.SIGKILL
    )
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
            "from smeg_actors.runtime.process_group import watch_parent\\n"
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
    wait_until(lambda: "watching" in lines(out), 20, message=lambda: f"the child wrote {lines(out)}")
    # When
    parent.kill()
    parent.wait()
    # Then
    wait_until(lambda: "parent gone" in lines(out), 5, message=lambda: f"the child wrote {lines(out)}")
    assert lines(out) == ["watching", "parent gone"]


# --- how many processes ``auto`` means ------------------------------------------------------


def fake_cgroup(root: Path, membership: str, files: dict[str, str]) -> Path:
    """A cgroup tree under ``root`` and a /proc/self/cgroup naming this process's place in it."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    (root / "self-cgroup").write_text(membership + "\n")
    return root / "self-cgroup"


CPUS = len(os.sched_getaffinity(0))


def test_auto_is_the_affinity_when_no_cpu_quota_is_set(tmp_path: Path) -> None:
    membership = fake_cgroup(tmp_path, "0::/", {"cpu.max": "max 100000"})
    assert cpu_quota(tmp_path, membership) is None
    assert cpu_count(tmp_path, membership) == CPUS


@pytest.mark.parametrize(
    ("limit", "expected"), [("150000 100000", 2), ("50000 100000", 1), ("100000 100000", 1)]
)
def test_auto_is_capped_by_the_own_cgroups_v2_quota_rounded_up(
    tmp_path: Path, limit: str, expected: int
) -> None:
    membership = fake_cgroup(tmp_path, "0::/kubepods/pod-1", {"kubepods/pod-1/cpu.max": limit})
    assert cpu_count(tmp_path, membership) == min(expected, CPUS)


def test_a_stricter_quota_higher_up_the_tree_wins(tmp_path: Path) -> None:
    membership = fake_cgroup(
        tmp_path,
        "0::/system.slice/smeg.service",
        {"system.slice/smeg.service/cpu.max": "max 100000", "system.slice/cpu.max": "50000 100000"},
    )
    assert cpu_quota(tmp_path, membership) == 0.5
    assert cpu_count(tmp_path, membership) == 1


def test_auto_reads_a_cgroup_v1_quota_and_ignores_minus_one(tmp_path: Path) -> None:
    files = {
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1",
    }
    membership = fake_cgroup(tmp_path, "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/", files)
    assert cpu_quota(tmp_path, membership) is None
    (tmp_path / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("100000\n")
    assert cpu_quota(tmp_path, membership) == 1.0
    assert cpu_count(tmp_path, membership) == 1


def test_an_unreadable_or_garbled_quota_means_no_cap(tmp_path: Path) -> None:
    membership = fake_cgroup(tmp_path, "garbled line\n0::/", {"cpu.max": "garbage"})
    assert cpu_quota(tmp_path, membership) is None
    assert cpu_quota(tmp_path / "missing", tmp_path / "no-such-file") is None
