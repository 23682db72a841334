"""Whether a delivery process is ready: consuming, with its store answering. Checked in the
background (``/readyz`` only reads the cached answer: no I/O, no side effects, never a queue
declared or a provider called).

A child of ``smeg run --processes N`` writes its answer to ``ready-PID.json`` in the metrics
directory each time it checks; the parent, which serves ``/readyz`` for the group, is ready while
every child is (``group_readiness``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

#: Seconds between checks; a store call running longer than ``SLOW_STORE`` counts as not answering.
EVERY = 1.0
SLOW_STORE = 3.0
#: A child's file older than this is a child that stopped checking.
STALE_FILE = 10.0


class Readiness(threading.Thread):
    """Checks every ``EVERY`` s: ``stopping()`` (why the process is ending, or None),
    ``consuming()`` (else the reason ``idle()`` gives), and ``ping_store()`` (raises when the store
    does not answer)."""

    def __init__(
        self,
        *,
        ping_store: Callable[[], None],
        consuming: Callable[[], bool],
        stopping: Callable[[], str | None],
        write_to: Path | None = None,
        idle: Callable[[], str] = lambda: "not consuming from the broker",
    ) -> None:
        super().__init__(name="smeg-readiness", daemon=True)
        self.ping_store, self.consuming, self.stopping = ping_store, consuming, stopping
        self.idle = idle
        self.write_to = write_to
        self.store_error: str | None = "store not checked yet"
        self.pinging_since: float | None = None
        self.halt = threading.Event()
        self.last: tuple[bool, list[str]] = (False, ["starting"])

    def run(self) -> None:
        while not self.halt.is_set():
            self.pinging_since = time.monotonic()
            try:
                self.ping_store()
                self.store_error = None
            except Exception as exc:
                self.store_error = f"store unavailable: {type(exc).__name__}: {exc}"[:200]
            self.pinging_since = None
            self._publish()
            self.halt.wait(EVERY)

    def stop(self) -> None:
        self.halt.set()

    def state(self) -> tuple[bool, list[str]]:
        """(ready, reasons), from the last check and a store call under way."""
        reasons = []
        why = self.stopping()
        if why:
            reasons.append(f"stopping: {why}")
        if not self.consuming():
            reasons.append(self.idle())
        since = self.pinging_since
        if since is not None and time.monotonic() - since > SLOW_STORE:
            reasons.append(f"store not answering for {time.monotonic() - since:.0f} s")
        elif self.store_error:
            reasons.append(self.store_error)
        return not reasons, reasons

    def _publish(self) -> None:
        ready, reasons = self.last = self.state()
        if self.write_to is None:
            return
        path = self.write_to / f"ready-{os.getpid()}.json"
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps({"ready": ready, "reasons": reasons}))
            temporary.replace(path)
        except OSError as exc:
            log.warning("readiness_not_written", error=str(exc)[:200])


def group_readiness(directory: Path, pids: Iterable[int]) -> tuple[bool, list[str]]:
    """The group is ready while each child's latest file says so and is fresh."""
    reasons = []
    now = time.time()
    for pid in pids:
        path = directory / f"ready-{pid}.json"
        try:
            age = now - path.stat().st_mtime
            answer = json.loads(path.read_text())
        except (OSError, ValueError):
            reasons.append(f"process {pid}: not checked yet")
            continue
        if age > STALE_FILE:
            reasons.append(f"process {pid}: no check for {age:.0f} s")
        elif not answer.get("ready"):
            reasons.extend(f"process {pid}: {reason}" for reason in answer.get("reasons", []))
    return not reasons, reasons


#: An id no message has: reading it is the cheapest question the store can answer.
PING_ID = "00000000-0000-0000-0000-000000000000"


def for_runtime(runtime: Any, write_to: Path | None = None) -> Readiness:
    """The readiness of a ``Runtime``: its stop reason, its intake's consumer, its store."""
    from uuid import UUID

    from domain.ports import MessageNotFoundError

    def ping() -> None:
        try:
            runtime.store.get(UUID(PING_ID))
        except MessageNotFoundError:
            pass

    def stopping() -> str | None:
        return runtime.stop_reason.reason or "stopping" if runtime.stop_reason.event.is_set() else None

    return Readiness(
        ping_store=ping,
        consuming=lambda: bool(getattr(runtime.intake, "consuming", True)),
        stopping=stopping,
        write_to=write_to,
    )


def runtime_alive(runtime: Any) -> bool:
    """The actor tree's root and the ticker that drives it are running (no I/O)."""
    supervisor, ticker = runtime.supervisor, runtime.ticker
    return bool(supervisor is not None and supervisor.is_alive() and ticker is not None and ticker.is_alive())


#: A projector loop that has not asked its stop event for this long is stuck: a round is one batch
#: of at most 2,000 events and one turn of the events exchange, a second or two at worst.
STALLED = 30.0


class Pulse(threading.Event):
    """The stop event of ``read_models.run_forever``, which asks it once a round: when the loop
    last asked is its heartbeat. Other threads ask ``stopping()``, which is not a beat."""

    def __init__(self) -> None:
        super().__init__()
        self.beat: float | None = None

    def is_set(self) -> bool:
        self.beat = time.monotonic()
        return super().is_set()

    def stopping(self) -> bool:
        return super().is_set()

    def stepping(self) -> bool:
        beat = self.beat
        return beat is not None and time.monotonic() - beat <= STALLED

    def why_not(self) -> str:
        beat = self.beat
        if beat is None:
            return "projection loop not started"
        return f"projection loop: no step for {time.monotonic() - beat:.0f} s"


def for_projector(store: Any, pulse: Pulse) -> Readiness:
    """The readiness of ``smeg projections run``: its loop steps, its store answers."""
    return Readiness(
        ping_store=store.ping,
        consuming=pulse.stepping,
        stopping=lambda: "signal" if pulse.stopping() else None,
        idle=pulse.why_not,
    )
