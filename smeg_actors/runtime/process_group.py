"""``smeg run --processes N``: N delivery processes under one parent, one unit for the orchestrator.

One ``smeg run`` uses about one core, whatever its threads do: Python's interpreter lock binds it.
On a host with more cores, several ``smeg run`` processes share the queue and the store (the
store's optimistic concurrency makes each attempt happen once, on PostgreSQL and on one SQLite
file alike). This parent starts them and keeps smeg's contract with its orchestrator, as one
process would:

- the first child keeps the read models (the configured ``SMEG_PROJECTOR``); the others run with
  ``SMEG_PROJECTOR=external``, so a deployment has one projector;
- the children start consuming together, once every one of them is ready (a child consuming alone
  took the whole backlog's start while its siblings booted on the same cores: a second of imports
  each, on this machine's two cores, in runs of two seconds);
- SIGTERM and SIGINT are passed on; each child stops gracefully; the parent exits 0;
- when a child ends by itself (4 broker lost, 5 restart intensity, 6 store lost, or killed), the
  others are stopped and the parent exits with that child's code (128 + N for signal N), so the
  orchestrator starts a fresh group: the same signal a single process gives;
- a child stops gracefully by itself once the parent is gone, even after a ``kill -9`` of it.
"""

from __future__ import annotations

import math
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import structlog

from smeg_actors.runtime.exit_codes import EXIT_OK

log = structlog.get_logger(__name__)

#: Set in a child's environment: the pid whose death ends the child.
PARENT_PID_VARIABLE = "SMEG_PARENT_PID"

#: Set in a child's environment: the descriptors it says "ready" on and reads "go" from.
READY_FD_VARIABLE = "SMEG_READY_FD"
GO_FD_VARIABLE = "SMEG_GO_FD"

#: How often the parent looks at its children, and a child at its parent (seconds).
POLL = 0.2

#: The longest the parent waits for every child to be ready, and a child for the word to go.
START_WAIT = 60.0

#: A child's own exits by these signals, during a stop the parent asked for, are clean stops
#: (a child still importing has no handler yet and dies of the signal).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def cpu_count(cgroup: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> int:
    """CPUs this process may use: its affinity (a container's cpuset), capped by the CPU quota of
    its cgroup or any above it, rounded up (a Kubernetes CPU limit, systemd's ``CPUQuota``), so
    that ``auto`` in a pod limited to 2 CPUs on a 64-core node starts 2 processes, not 64."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = cpu_quota(cgroup, membership)
    return max(1, min(count, math.ceil(quota))) if quota is not None else count


def cpu_quota(cgroup: Path, membership: Path) -> float | None:
    """The smallest CPU quota (in CPUs) from this process's cgroup up to the root; None if none
    is set or readable. cgroup v2: ``cpu.max`` ("max 100000", "150000 100000"); v1:
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: no limit)."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    quotas: list[float] = []
    for line in lines or ["0::/"]:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base = cgroup
        elif "cpu" in controllers.split(","):
            base = cgroup / controllers if (cgroup / controllers).is_dir() else cgroup / "cpu"
        else:
            continue
        here = base / path.lstrip("/")
        for folder in (here, *here.parents):
            if folder == base.parent:
                break
            quota = _v2_quota(folder) if controllers == "" else _v1_quota(folder)
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def _v2_quota(folder: Path) -> float | None:
    try:
        limit, every = (folder / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(every)
    except (OSError, ValueError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def watch_parent(parent: int, on_gone: Callable[[], None], interval: float = POLL) -> threading.Thread:
    """Call ``on_gone`` once ``parent`` is no longer this process's parent (it died, even by kill -9).

    Linux re-parents an orphan; comparing ``getppid`` needs no signal set up before ``exec``.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        log.warning("parent_process_gone", parent=parent)
        on_gone()

    thread = threading.Thread(target=watch, name="smeg-parent-watch", daemon=True)
    thread.start()
    return thread


def announce_ready() -> None:
    """In a child: tell the parent it is ready (nothing when no parent waits for word)."""
    _say_ready(os.environ.pop(READY_FD_VARIABLE, None))


def _say_ready(fd: str | None) -> None:
    if fd is None:
        return
    try:
        os.write(int(fd), b"ready\n")
        os.close(int(fd))
    except (OSError, ValueError):
        pass  # the parent stopped waiting, or is gone


def start_gate() -> Callable[[], None]:
    """In a group's child: what to call just before consuming (say ready, wait for the word to go).

    Takes the descriptors out of the environment, so this process's own children do not inherit
    them. Outside a group, it does nothing.
    """
    ready, go = os.environ.pop(READY_FD_VARIABLE, None), os.environ.pop(GO_FD_VARIABLE, None)
    if ready is None or go is None:
        return lambda: None

    def gate() -> None:
        _say_ready(ready)
        try:
            select.select([int(go)], [], [], START_WAIT)  # "go", or end of file: the parent is gone
            os.close(int(go))
        except (OSError, ValueError):
            pass

    return gate


@dataclass
class Child:
    """One started child, its end of the start pipes, and how it ended."""

    index: int
    process: subprocess.Popen[bytes]
    ready: int
    go: int
    code: int | None = None
    said_ready: bool = False  #: its signal handlers are in place (before, SIGUSR1 would kill it)


@dataclass
class ProcessGroup:
    """Starts ``commands``, passes signals on, and ends as a whole with the first child's exit.

    Args:
        commands: one (argv, environment) per child.
        stop_timeout: how long children may take to stop gracefully before they are killed.
    """

    commands: Sequence[tuple[Sequence[str], Mapping[str, str]]]
    stop_timeout: float
    children: list[Child] = field(default_factory=list)
    stopping: bool = False
    code: int = EXIT_OK
    reason: str = ""

    def run(self) -> int:
        """Start every child, wait until the group ends, return the exit code."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._on_signal)
        try:
            for index, (argv, env) in enumerate(self.commands):
                if not self.stopping:
                    self.children.append(self._spawn(index, argv, env))
            log.info("delivery_processes_started", pids=[c.process.pid for c in self.children])
            self._start_together()
            self._watch()
            self._stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for child in self.children:
                _close(child.ready, child.go)
        return self.code

    @staticmethod
    def _spawn(index: int, argv: Sequence[str], env: Mapping[str, str]) -> Child:
        ready_read, ready_write = os.pipe()
        go_read, go_write = os.pipe()
        fds = {READY_FD_VARIABLE: str(ready_write), GO_FD_VARIABLE: str(go_read)}
        try:
            process = subprocess.Popen(
                list(argv), env=dict(env) | fds, stdin=subprocess.DEVNULL, pass_fds=(ready_write, go_read)
            )
        except BaseException:
            _close(ready_read, go_write)
            raise
        finally:
            _close(ready_write, go_read)
        return Child(index, process, ready_read, go_write)

    def _start_together(self) -> None:
        """Wait until every child said ready (or one ended, or a signal), then tell all to go."""
        waiting = {child.ready: child for child in self.children}
        deadline = time.monotonic() + START_WAIT
        while waiting and not self.stopping and time.monotonic() < deadline:
            if any(self._ended(child) for child in self.children):
                break  # the group ends; _watch says why
            readable, _, _ = select.select(list(waiting), [], [], POLL)
            for fd in readable:
                child = waiting.pop(fd)
                child.said_ready = os.read(fd, 64).startswith(b"ready")  # else end of file: it died
        if waiting and not self.stopping:
            log.warning("delivery_processes_not_ready", indexes=sorted(c.index for c in waiting.values()))
        for child in self.children:
            try:
                os.write(child.go, b"go\n")
            except OSError:
                pass  # it ended; _watch sees it

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGUSR1:  # thread dumps: every child's that can take the signal
            self._send(signal.SIGUSR1, only_ready=True)
            return
        if not self.stopping:
            log.info("signal_received", signal=signal.Signals(signum).name)
        self.stopping = True

    def _watch(self) -> None:
        """Until a signal, or until a child ends by itself."""
        while not self.stopping:
            for child in self.children:
                if self._ended(child):
                    self.stopping = True
                    self.reason = f"delivery process {child.index} (pid {child.process.pid}) exited"
                    log.error(
                        "delivery_process_exited", index=child.index, pid=child.process.pid, code=child.code
                    )
                    break
            else:
                time.sleep(POLL)

    def _stop(self) -> None:
        self._send(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while any(not self._ended(c) for c in self.children):
            if time.monotonic() > deadline:
                for child in self.children:
                    if not self._ended(child):
                        log.warning("delivery_process_killed", index=child.index, pid=child.process.pid)
                        child.process.kill()
                        child.process.wait()
                        self._ended(child)
                break
            time.sleep(POLL / 4)

    def _send(self, signum: signal.Signals, *, only_ready: bool = False) -> None:
        for child in self.children:
            if child.process.poll() is None and (child.said_ready or not only_ready):
                try:
                    child.process.send_signal(signum)
                except ProcessLookupError:
                    pass

    def _ended(self, child: Child) -> bool:
        """Whether ``child`` has exited; its code joins the group's (the first failure wins)."""
        if child.code is not None:
            return True
        returncode = child.process.poll()
        if returncode is None:
            return False
        asked = self.stopping and not self.reason
        if returncode < 0:
            child.code = EXIT_OK if asked and -returncode in STOP_SIGNALS else 128 - returncode
        else:
            child.code = returncode
        if child.code != EXIT_OK and self.code == EXIT_OK:
            self.code = child.code
        return True


def _close(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
