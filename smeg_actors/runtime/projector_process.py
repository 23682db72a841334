"""The projector process actor: the read models and the events exchange in a child process.

With ``SMEG_PROJECTOR=process`` (what ``auto`` picks) ``smeg run`` starts
``smeg projections run`` as its own child. The read models then get a core of their own instead
of sharing the delivery pipeline's interpreter lock (in one process, a busy pipeline starved the
projector: seconds of lag on PostgreSQL), and the operator still runs one command. The child is
supervised like any actor: when it exits, this actor fails, and the supervisor restarts it (a new
child), within the restart intensity. The child exits by itself when its parent is gone, even
after a ``kill -9``.

The child says when it is ready (imported, connected, tables in place) by writing to a pipe whose
descriptor it gets in ``SMEG_READY_FD``; ``smeg run`` waits for that, a bounded time, before it
consumes. A child booting while the pipeline runs took most of a core for most of a second (its
imports alone are 0.7 s of CPU here), away from the first requests.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from typing import Any

import pykka
import structlog

from smeg_actors.actors.messages import AwaitReady, GetPid, Tick
from smeg_actors.actors.supervisor import Supervised
from smeg_actors.runtime.config import Settings
from smeg_actors.runtime.process_group import PARENT_PID_VARIABLE, READY_FD_VARIABLE

log = structlog.get_logger(__name__)


#: The settings the child needs, passed explicitly (the parent may have read them from a file).
CHILD_SETTINGS = (
    "database_url",
    "database_schema",
    "read_models_url",
    "database_timeout",
    "amqp_url",
    "queue_prefix",
    "heartbeat",
    "log_format",
    "log_level",
)


def child_environment(settings: Settings) -> dict[str, str]:
    """The parent's environment, with the settings the child needs and the parent's pid."""
    env = dict(os.environ)
    env.pop("SMEG_CONFIG", None)
    for name in CHILD_SETTINGS:
        value = getattr(settings, name)
        if value is not None:
            env[f"SMEG_{name.upper()}"] = str(value)
    env[PARENT_PID_VARIABLE] = str(os.getpid())
    return env


class ProjectorProcessActor(Supervised):
    """Owns one ``smeg projections run`` child; fails (to be restarted) when the child exits."""

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        settings: Settings,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(name, supervisor)
        self.settings, self.stop_timeout = settings, stop_timeout
        self.child: subprocess.Popen[bytes] | None = None
        self.ready_pipe: int | None = None

    def on_start(self) -> None:
        command = [sys.executable, "-m", "smeg_actors", "projections", "run"]
        env = child_environment(self.settings)
        read_end, write_end = os.pipe()
        env[READY_FD_VARIABLE] = str(write_end)
        try:
            self.child = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, pass_fds=(write_end,))
        finally:
            os.close(write_end)
        self.ready_pipe = read_end
        log.info("projector_process_started", pid=self.child.pid)

    def on_receive(self, message: Any) -> Any:
        match message:
            case Tick():
                self._check()
            case AwaitReady(timeout=timeout):
                return self._wait_ready(timeout)
            case GetPid():
                return self.child.pid if self.child else None
            case _:
                log.warning("unknown_message_dropped", message=repr(message))
        return None

    def _wait_ready(self, timeout: float) -> bool:
        """Whether the child said it is ready within ``timeout`` s (False if it exited first)."""
        pipe, self.ready_pipe = self.ready_pipe, None
        if pipe is None:
            return False
        try:
            readable, _, _ = select.select([pipe], [], [], timeout)
            return bool(readable) and os.read(pipe, 64).startswith(b"ready")
        finally:
            os.close(pipe)

    def _check(self) -> None:
        if self.child is not None and (code := self.child.poll()) is not None:
            self.child = None
            raise RuntimeError(f"projector process exited with code {code}")

    def on_stop(self) -> None:
        self._end_child()

    def on_failure(self, *args: Any) -> None:
        self._end_child()
        super().on_failure(*args)

    def _end_child(self) -> None:
        if self.ready_pipe is not None:
            os.close(self.ready_pipe)
            self.ready_pipe = None
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("projector_process_killed", pid=child.pid)
            child.kill()
            child.wait()
