"""The supervisor: starts its children, restarts the ones that die, escalates like OTP.

pykka has no linking: a child's ``on_failure`` reports to us (``Supervised``), and a liveness
sweep on every tick catches the deaths that ``on_failure`` never sees (a failed ``on_start``).

pykka drops what was told to an actor that crashes before handling it. Nothing handed to a child
may be lost that way: a dying child takes its unhandled messages out of its inbox and hands them
to the supervisor, and a message told to a child that is dead waits in ``Children`` until its
successor starts. Both happen under ``TELL_LOCK``, so no message slips in between.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pykka
import structlog

from smeg_actors.actors.messages import ChildFailed, GetCounts, StopChildren, Tick
from smeg_actors.runtime import metrics

log = structlog.get_logger(__name__)


class RestartLog:
    """When this process's supervisors restarted a child (monotonic seconds; the latest 1,000),
    for the ``restart_storm`` alert."""

    def __init__(self) -> None:
        self.times: deque[float] = deque(maxlen=1000)

    def record(self, at: float) -> None:
        self.times.append(at)

    def since(self, at: float) -> int:
        return sum(1 for t in list(self.times) if t >= at)


#: This process's restarts.
RESTARTS = RestartLog()

#: The longest pause before restarting a child that keeps crashing, seconds.
RESTART_BACKOFF_MAX = 0.5

#: Held while a message is told to a child and while a dying child empties its inbox: a message
#: is either in the inbox before it is emptied, or finds the child dead and waits for its successor.
TELL_LOCK = threading.Lock()


class Children:
    """The current ref of each child by name, shared with actors that send to siblings.

    Thread-safe: the supervisor replaces refs on restart while other actors read them.
    """

    def __init__(self) -> None:
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
        self._parked: dict[str, list[Any]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> pykka.ActorRef[Any]:
        with self._lock:
            return self._refs[name]

    def set(self, name: str, ref: pykka.ActorRef[Any]) -> None:
        """Make ``ref`` the child ``name``, and hand it what waited for it."""
        with TELL_LOCK:
            with self._lock:
                self._refs[name] = ref
            parked = self._parked.pop(name, [])
            for message in parked:
                self._tell_or_park(name, ref, message)
        if parked:
            log.info("parked_messages_handed_on", child=name, count=len(parked))

    def park(self, name: str, messages: tuple[Any, ...]) -> None:
        """Keep ``messages`` for the next child called ``name``."""
        with TELL_LOCK:
            self._parked.setdefault(name, []).extend(messages)

    def parked(self, name: str) -> int:
        with TELL_LOCK:
            return len(self._parked.get(name, ()))

    def items(self) -> list[tuple[str, pykka.ActorRef[Any]]]:
        with self._lock:
            return list(self._refs.items())

    def tell_quietly(self, name: str, message: Any) -> None:
        """Send if the child is alive; drop silently otherwise (ticks)."""
        try:
            self.get(name).tell(message)
        except (pykka.ActorDeadError, KeyError):
            pass

    def tell(self, name: str, message: Any) -> None:
        """Send to a child; a message to a child that is restarting waits for its successor."""
        with TELL_LOCK:
            with self._lock:
                ref = self._refs.get(name)
            parked = not self._tell_or_park(name, ref, message)
        if parked:
            log.info("message_to_restarting_child_parked", child=name, message=type(message).__name__)

    def _tell_or_park(self, name: str, ref: pykka.ActorRef[Any] | None, message: Any) -> bool:
        """Under TELL_LOCK: tell ``ref``, or park the message if it is dead. True if told."""
        try:
            if ref is None:
                raise KeyError(name)
            ref.tell(message)
            return True
        except (pykka.ActorDeadError, KeyError):
            self._parked.setdefault(name, []).append(message)
            return False


class Supervised(pykka.ThreadingActor):
    """Base of supervised actors: a death is reported to the supervisor."""

    def __init__(self, name: str, supervisor: pykka.ActorRef[Any] | None) -> None:
        super().__init__()
        self.name = name
        self.supervisor = supervisor

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback_: TracebackType | None,
    ) -> None:
        first_line = (str(exception_value).strip().splitlines() or [""])[0]
        error = f"{exception_type.__name__ if exception_type else '?'}: {first_line}"
        orphans = self._orphans()
        log.error(
            "actor_crashed",
            actor=self.name,
            error=error,
            where="".join(traceback.format_tb(traceback_)[-1:]).strip(),
            unhandled=len(orphans),
        )
        if self.supervisor is not None:
            try:
                self.supervisor.tell(ChildFailed(self.name, error, orphans))
                return
            except pykka.ActorDeadError:
                pass
        if orphans:
            log.error("unhandled_messages_lost_with_actor", actor=self.name, count=len(orphans))

    def _orphans(self) -> tuple[Any, ...]:
        """Empty the inbox of this dead actor: what was told comes back, what was asked fails."""
        orphans: list[Any] = []
        inbox: queue.Queue[Any] = self.actor_inbox  # type: ignore[assignment]
        with TELL_LOCK:
            while True:
                try:
                    envelope = inbox.get_nowait()
                except queue.Empty:
                    break
                message, reply_to = envelope.message, envelope.reply_to
                if reply_to is not None and type(message).__name__ == "_ActorStop":
                    reply_to.set(None)  # as pykka answers a stop request to a stopped actor
                elif reply_to is not None:
                    dead = pykka.ActorDeadError(f"{self.actor_ref} crashed before handling the message")
                    reply_to.set_exception(exc_info=(pykka.ActorDeadError, dead, None))
                elif not type(message).__module__.startswith("pykka"):  # not a proxy's fire-and-forget
                    orphans.append(message)
        return tuple(orphans)


@dataclass(frozen=True)
class ChildSpec:
    """How to (re)start one child: ``start(supervisor_ref)`` returns its ref."""

    name: str
    start: Callable[[pykka.ActorRef[Any]], pykka.ActorRef[Any]]


class SupervisorActor(pykka.ThreadingActor):
    """One-for-one supervision with restart intensity.

    Args:
        specs: children, started in this order.
        children: the shared name → ref table.
        max_restarts: more restarts than this within ``period`` seconds escalates.
        period: the intensity window, seconds.
        escalate: called (once) when intensity is exceeded; the process then shuts down.
        on_restart: called with the child's name after each restart (dispatcher recovery).
    """

    def __init__(
        self,
        specs: list[ChildSpec],
        children: Children,
        *,
        max_restarts: int,
        period: float,
        escalate: Callable[[str], None],
        on_restart: Callable[[str], None] = lambda _n: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        self.specs = {spec.name: spec for spec in specs}
        self.order = [spec.name for spec in specs]
        self.children = children
        self.max_restarts, self.period = max_restarts, period
        self.escalate, self.on_restart, self.clock, self.sleep = escalate, on_restart, clock, sleep
        self.restarts: deque[float] = deque()
        self.last_restart: dict[str, tuple[float, int]] = {}  # name -> (when, restarts in a row)
        self.restart_counts: dict[str, int] = {}
        self.stopping = False

    def on_start(self) -> None:
        for name in self.order:
            self.children.set(name, self.specs[name].start(self.actor_ref))

    def on_receive(self, message: Any) -> Any:
        match message:
            case ChildFailed(name=name, error=error, orphans=orphans):
                if orphans and not self.stopping:
                    self.children.park(name, orphans)
                self._child_failed(name, error)
            case Tick():
                self._sweep()
            case GetCounts():
                return dict(self.restart_counts)
            case StopChildren():
                self._stop_children()
            case _:
                log.warning("unknown_message_dropped", message=repr(message))
        return None

    def _child_failed(self, name: str, error: str) -> None:
        if self.stopping or name not in self.specs:
            return
        ref = self.children.get(name)
        if ref.is_alive():
            return
        now = self.clock()
        self.restarts.append(now)
        while self.restarts and self.restarts[0] < now - self.period:
            self.restarts.popleft()
        if len(self.restarts) > self.max_restarts:
            log.critical(
                "restart_intensity_exceeded",
                child=name,
                error=error,
                restarts=len(self.restarts),
                period_s=self.period,
            )
            self.stopping = True
            self.escalate(
                f"{name} crashed {len(self.restarts)} times in {self.period:g}s: {error.splitlines()[0]}"
            )
            return
        self.sleep(self._backoff(name, now))
        try:
            self.children.set(name, self.specs[name].start(self.actor_ref))
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [""])[0]
            log.critical("child_restart_failed", child=name, error=f"{type(exc).__name__}: {reason}")
            self.stopping = True
            self.escalate(f"{name} could not be restarted: {type(exc).__name__}: {reason}")
            return
        self.restart_counts[name] = self.restart_counts.get(name, 0) + 1
        log.warning("child_restarted", child=name, error=error, restarts=self.restart_counts[name])
        metrics.restarts.labels(name.split("-")[0]).inc()
        RESTARTS.record(time.monotonic())
        self.on_restart(name)

    def _backoff(self, name: str, now: float) -> float:
        """A child that crashes again soon after its restart waits a little longer each time
        (50 ms doubling, at most RESTART_BACKOFF_MAX s): a crash loop on a resource that comes
        back in a moment should not spend the whole restart intensity at once."""
        when, in_a_row = self.last_restart.get(name, (float("-inf"), 0))
        in_a_row = in_a_row + 1 if now - when < self.period else 0
        self.last_restart[name] = (now, in_a_row)
        return 0.0 if in_a_row == 0 else min(0.05 * 2 ** (in_a_row - 1), RESTART_BACKOFF_MAX)

    def _sweep(self) -> None:
        for name, ref in self.children.items():
            if not ref.is_alive() and not self.stopping:
                self._child_failed(name, "found dead by the liveness sweep")

    def _stop_children(self) -> None:
        self.stopping = True
        for name in reversed(self.order):
            try:
                self.children.get(name).stop(block=True, timeout=5)
            except (pykka.ActorDeadError, pykka.Timeout, KeyError):
                pass
