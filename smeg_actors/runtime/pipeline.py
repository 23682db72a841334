"""The running pipeline: the actor tree of one delivery process, its start, wait and stop.

It builds no adapter: ``bootstrap.build_runtime`` hands it the ``Parts`` (the composition root).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka
import structlog

from domain.routing import RoutingPolicy
from smeg_actors.actors.dispatcher import Backlog, DispatcherActor, WorkerRestarted
from smeg_actors.actors.flags import FlagsView, PausingRouting, flags_specs, when_redrive_auto
from smeg_actors.actors.gateway import GatewayActor
from smeg_actors.actors.intake import IntakeActor
from smeg_actors.actors.messages import (
    AwaitReady,
    Drain,
    GetCounts,
    IsIdle,
    RequestsReceived,
    StopChildren,
    Tick,
)
from smeg_actors.actors.projector import ProjectorActor
from smeg_actors.actors.provider_calls import ProviderCalls
from smeg_actors.actors.provider_health import ProviderHealthActor, ProviderHealthView
from smeg_actors.actors.publisher import PublisherActor
from smeg_actors.actors.redrive import RedriverActor
from smeg_actors.actors.scheduler import SchedulerActor
from smeg_actors.actors.supervisor import Children, ChildSpec, SupervisorActor
from smeg_actors.actors.ticker import Ticker
from smeg_actors.actors.worker import WorkerActor
from smeg_actors.runtime.alert_specs import alert_specs
from smeg_actors.runtime.canary import canary_specs
from smeg_actors.runtime.clock import Clock, utc_now
from smeg_actors.runtime.config import Settings
from smeg_actors.runtime.exit_codes import EXIT_BROKER_LOST, EXIT_ESCALATED, EXIT_OK, EXIT_STORE_LOST
from smeg_actors.runtime.parts import Parts
from smeg_actors.runtime.projector_process import ProjectorProcessActor

log = structlog.get_logger(__name__)

#: Seconds ``smeg run`` waits for its projector child to be ready before it consumes.
READ_SIDE_WAIT = 15.0

#: The main thread's longest sleep while the runtime runs (see ``Runtime.wait``).
WAIT_SLICE = 0.2


@dataclass
class Stop:
    """Why the runtime stops: the first fatal reason wins."""

    event: threading.Event = field(default_factory=threading.Event)
    code: int = EXIT_OK
    reason: str = ""

    def set(self, code: int, reason: str) -> None:
        if not self.event.is_set():
            self.code, self.reason = code, reason
            self.event.set()


class Runtime:
    """The running pipeline: ``start()``, then ``wait()``, then ``stop()``.

    Args:
        settings: typed settings.
        parts: the adapters, behind their ports.
        clock: UTC now (tests inject their own).
        stale_after: seconds after which an attempt with no outcome counts as interrupted.
    """

    def __init__(
        self, settings: Settings, parts: Parts, *, clock: Clock = utc_now, stale_after: float | None = None
    ) -> None:
        providers = parts.providers
        if not providers:
            raise ValueError("at least one provider must be configured")
        self.settings, self.parts, self.store, self.intake = settings, parts, parts.store, parts.intake
        self.providers, self.clock, self.engine = providers, clock, parts.engine
        self.default_provider = settings.default_provider or next(iter(providers))
        #: The operators' flags (``delivery.paused`` …), refreshed by the ``flags`` actor.
        self.flags = FlagsView()
        routing = parts.routing or RoutingPolicy(self.default_provider, frozenset(providers))
        self.routing = PausingRouting.over(routing, self.flags, clock)
        if parts.alerting is not None:
            parts.alerting.paused = self.flags.pause_reason
        timeout = max(float(getattr(p, "timeout", 5.0)) for p in providers.values())
        self.call_timeout = timeout + 5.0
        default_stale = settings.stale_after or 2 * self.call_timeout + 30
        self.stale_after = stale_after if stale_after is not None else default_stale
        self.stop_reason = Stop()
        self.children = Children()
        self.gate = ProviderHealthView(
            providers,
            repository=parts.health,
            policies=parts.policies,
            limits=parts.limits,
            opened_by=f"pid {os.getpid()} on {socket.gethostname()}",
        )
        self.calls = ProviderCalls(providers, settings.provider_concurrency)
        self.workers = [f"worker-{i}" for i in range(settings.workers)]
        self.dispatcher_backlog = Backlog()
        # More than one: a batch is prepared and committed while the one before waits on the store.
        self.intakes = [f"intake-{i}" for i in range(settings.intake_actors)]
        self._next_intake = 0
        self.supervisor: pykka.ActorRef[Any] | None = None
        self.ticker: Ticker | None = None

    def fatal(self, code: int, reason: str) -> None:
        """Ask the process to stop with ``code`` (thread-safe; the first reason wins)."""
        log.critical("runtime_stopping", exit_code=code, reason=reason)
        self.stop_reason.set(code, reason)

    def start(self, before_consuming: Callable[[], None] = lambda: None) -> None:
        """Start the actor tree, then the broker consumer (``before_consuming`` runs in between)."""
        self.supervisor = SupervisorActor.start(
            self._specs(),
            self.children,
            max_restarts=self.settings.restart_max,
            period=self.settings.restart_period,
            escalate=lambda why: self.fatal(EXIT_ESCALATED, why),
            on_restart=self._restarted,
        )
        self.children.set("supervisor", self.supervisor)
        self.supervisor.ask(GetCounts(), timeout=120)
        self._await_flags()
        self._await_read_side()
        names = ["supervisor", "flags", "scheduler", "dispatcher", "projector", "publisher", "gateway"]
        names += ["health", "alerts", "canary"]
        self.ticker = Ticker(self.children, names, interval=0.1)
        self.ticker.start()
        before_consuming()
        self.intake.start(self._on_batch, lambda why: self.fatal(EXIT_BROKER_LOST, why))
        log.info(
            "runtime_started", workers=len(self.workers), providers=sorted(self.providers), pid=os.getpid()
        )

    def _await_flags(self, timeout: float = 15.0) -> None:
        """The flags actor answers once its first read is done: a pause in force is obeyed
        before the first delivery is taken (a store too slow to answer: the defaults, for now)."""
        if self.parts.flags is None:
            return
        try:
            self.children.get("flags").ask(Tick(), timeout=timeout)
        except Exception as exc:
            log.warning("flags_not_read_before_consuming", error=str(exc)[:200])

    def _await_read_side(self, timeout: float = READ_SIDE_WAIT) -> None:
        """Let the projector child boot before consuming (it would take the CPU from the first
        requests); after ``timeout`` s without word from it, consume anyway."""
        if self.settings.projector_mode != "process":
            return
        try:
            ready = self.children.get("projector").ask(AwaitReady(timeout), timeout=timeout + 5)
        except Exception as exc:
            log.warning("projector_not_ready", error=str(exc)[:200])
            return
        if ready:
            log.info("projector_ready")
        else:
            log.warning("projector_not_ready", waited_s=timeout)

    def wait(self, timeout: float | None = None) -> int:
        """Block until something asks the runtime to stop; return the exit code.

        Waits in short slices: Python runs signal handlers only in the main thread, and a
        SIGTERM the kernel hands to another thread (any thread may get a process's signal) does
        not wake a main thread blocked on a lock, so one long wait could miss it for good.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = WAIT_SLICE if deadline is None else min(WAIT_SLICE, deadline - time.monotonic())
            if left <= 0 or self.stop_reason.event.wait(left):
                return self.stop_reason.code

    def backlog(self) -> int:
        return self.dispatcher_backlog.value

    def idle(self) -> bool:
        """True when no message is queued or being attempted."""
        try:
            return bool(self.children.get("dispatcher").ask(IsIdle(), timeout=5))
        except Exception:
            return False

    def stop(self, timeout: float | None = None) -> None:
        """Stop consuming, let in-flight attempts finish (up to ``timeout``), stop the actors."""
        limit = timeout if timeout is not None else self.settings.shutdown_timeout
        deadline = time.monotonic() + limit
        self.intake.stop()
        try:
            self.children.get("dispatcher").ask(Drain(), timeout=5)
        except Exception as exc:
            log.warning("dispatcher_not_drained", error=str(exc)[:200])
        while time.monotonic() < deadline and not self.idle():
            if self.stop_reason.code not in (EXIT_OK,):
                break
            time.sleep(0.05)
        if self.ticker is not None:
            self.ticker.stop()
        if self.supervisor is not None:
            try:
                self.supervisor.ask(StopChildren(), timeout=max(1.0, deadline - time.monotonic()))
                self.supervisor.stop(block=True, timeout=5)
            except (pykka.ActorDeadError, pykka.Timeout):
                pass
        self.calls.stop()
        self.engine.dispose()

    def _on_batch(self, deliveries: list[Any]) -> None:
        """Hand a batch to the next intake actor in turn (called by the consumer thread only).

        A batch for an intake actor that is restarting waits for its successor (``Children``);
        if none comes, the process exits and the broker requeues the batch, still unacked.
        """
        name = self.intakes[self._next_intake]
        self._next_intake = (self._next_intake + 1) % len(self.intakes)
        self.children.tell(name, RequestsReceived(tuple(deliveries)))

    def hold_intake(self) -> bool:
        """Backpressure for the consumer: hold deliveries while the backlog is large, or while
        delivery is paused (RabbitMQ's intake also stops consuming then: ``paused``)."""
        return self.flags.delivery_paused() or self.backlog() > self.settings.max_in_flight

    def _restarted(self, name: str) -> None:
        if name.startswith("worker-"):
            self.children.tell("dispatcher", WorkerRestarted(name))

    def _store_lost(self, why: str) -> None:
        self.fatal(EXIT_STORE_LOST, f"event store unavailable for {self.settings.store_grace:g}s: {why}")

    def _worker_starter(self, name: str) -> Any:
        s = self.settings

        def start(sup: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
            return WorkerActor.start(
                name,
                sup,
                store=self.store,
                providers=self.providers,
                default_provider=self.default_provider,
                policy=s.backoff,
                calls=self.calls,
                gate=self.gate,
                routing=self.routing,
                children=self.children,
                clock=self.clock,
                stale_after=self.stale_after,
                call_timeout=self.call_timeout,
                grace=s.store_grace,
                on_store_lost=self._store_lost,
            )

        return start

    def _intake_starter(self, name: str) -> Any:
        def start(sup: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
            return IntakeActor.start(
                name,
                sup,
                store=self.store,
                intake=self.intake,
                children=self.children,
                clock=self.clock,
                grace=self.settings.store_grace,
                on_store_lost=self._store_lost,
            )

        return start

    def _specs(self) -> list[ChildSpec]:
        """Every child, in start order: the read side, then the scheduler, publisher, dispatcher,
        workers and intakes, then what publishes or redrives."""
        children = self.children
        return [
            *flags_specs(self.flags, self.parts.flags, children, self.clock),
            *self._projector_specs(),
            ChildSpec("scheduler", self._scheduler_starter()),
            ChildSpec(
                "publisher",
                lambda sup: PublisherActor.start(
                    "publisher", sup, outbox=self.parts.outbox, children=children
                ),
            ),
            ChildSpec(
                "dispatcher",
                lambda sup: DispatcherActor.start(
                    "dispatcher",
                    sup,
                    workers=self.workers,
                    children=children,
                    backlog=self.dispatcher_backlog,
                    paused=self.flags.delivery_paused,
                ),
            ),
            *(ChildSpec(name, self._worker_starter(name)) for name in self.workers),
            *(ChildSpec(name, self._intake_starter(name)) for name in self.intakes),
            *self._health_specs(),
            *alert_specs(self.parts.alerting, self.clock),
            *canary_specs(self.parts.canary, self.clock, enabled=self.flags.canary_enabled),
            *self._gateway_specs(),
            *self._redriver_specs(),
        ]

    def _projector_specs(self) -> list[ChildSpec]:
        mode, settings = self.settings.projector_mode, self.settings
        if mode == "inline":
            read_models = self.parts.read_models
            return [
                ChildSpec(
                    "projector", lambda sup: ProjectorActor.start("projector", sup, read_models=read_models)
                )
            ]
        if mode == "process":
            return [
                ChildSpec(
                    "projector", lambda sup: ProjectorProcessActor.start("projector", sup, settings=settings)
                )
            ]
        return []

    def _scheduler_starter(self) -> Any:
        def start(sup: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
            return SchedulerActor.start(
                "scheduler",
                sup,
                store=self.store,
                unfinished=self.parts.unfinished,
                catch_up=lambda: sum(self.parts.status.catch_up().values()),
                children=self.children,
                clock=self.clock,
                stale_after=self.stale_after,
                paused=self.flags.delivery_paused,
                requested=self.parts.requested,
            )

        return start

    def _health_specs(self) -> list[ChildSpec]:
        """Before the workers' first batch the view is read once (``on_start``)."""
        repository = self.parts.health
        if repository is None:
            return []
        view = self.gate
        return [
            ChildSpec(
                "health",
                lambda sup: ProviderHealthActor.start(
                    "health",
                    sup,
                    view=view,
                    repository=repository,
                    clock=self.clock,
                    peers=self.parts.peers,
                    process=f"{socket.gethostname()}/{os.getpid()}",
                ),
            )
        ]

    def _gateway_specs(self) -> list[ChildSpec]:
        events = self.parts.events
        if events is None or self.settings.projector_mode != "inline":
            return []
        return [ChildSpec("gateway", lambda sup: GatewayActor.start("gateway", sup, publisher=events))]

    def _redriver_specs(self) -> list[ChildSpec]:
        open_failed_queue, s = self.parts.open_failed_queue, self.settings
        if open_failed_queue is None:
            return []

        def start(sup: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
            return RedriverActor.start(
                "redriver",
                sup,
                store=self.store,
                open_reader=when_redrive_auto(self.flags, open_failed_queue),
                children=self.children,
                clock=self.clock,
                rate=s.redrive_rate,
                max_cycles=s.redrive_max_cycles,
            )

        return [ChildSpec("redriver", start)]
