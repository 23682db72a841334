"""``smeg run``: check the dependencies, start the runtime, stop on a signal or a fatal loss.

With ``SMEG_PROCESSES`` above 1 this process only checks and then parents that many delivery
processes (``process_group``)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import click
import pykka.debug
import structlog

from adapters.event_store import MessageStore, StoreError
from adapters.rabbitmq import BrokerUnavailableError
from smeg_actors.runtime import tracing
from smeg_actors.runtime.bootstrap import build_runtime
from smeg_actors.runtime.canary import GROUP_INDEX_VARIABLE
from smeg_actors.runtime.config import Settings, SettingsError
from smeg_actors.runtime.exit_codes import EXIT_OK, EXIT_UNHEALTHY
from smeg_actors.runtime.factory import build_providers, check_routing, open_store
from smeg_actors.runtime.health import dependency_checks, run_checks
from smeg_actors.runtime.ops_http import (
    ENDPOINTS,
    MULTIPROC_VARIABLE,
    OpsServer,
    Probe,
    metrics_directory,
    remove_directory,
)
from smeg_actors.runtime.process_group import (
    PARENT_PID_VARIABLE,
    ProcessGroup,
    cpu_count,
    start_gate,
    watch_parent,
)
from smeg_actors.runtime.projection_watch import ProjectionWatch
from smeg_actors.runtime.queue_watch import QueueWatch
from smeg_actors.runtime.readiness import for_runtime, group_readiness, runtime_alive

log = structlog.get_logger(__name__)


def serve(settings: Settings, config_path: str | None = None) -> int:
    """Run until stopped; the process exits with the returned code (see exit_codes)."""
    processes = cpu_count() if settings.processes == "auto" else settings.processes
    parent = os.environ.get(PARENT_PID_VARIABLE)
    gate = start_gate()
    inherited = os.environ.get(MULTIPROC_VARIABLE)
    metrics = (
        Path(inherited) if inherited else metrics_directory(settings.metrics_dir, parent, settings.http_port)
    )
    providers = build_providers(settings)
    check_routing(settings, providers)
    admin = admin_app(settings) if parent is None else None
    stores: list[MessageStore] = []

    def open_checked_store() -> MessageStore:
        stores.append(open_store(settings))
        return stores[-1]

    if parent is None:
        healthy, results = run_checks(dependency_checks(settings, open_checked_store, providers))
        for result in results:
            click.echo(result.line(), err=True)
        if not healthy:
            return exiting(EXIT_UNHEALTHY, "a dependency failed the start-up check")
        store = stores[0]
    else:  # a child of a group, whose parent has just checked every dependency for all of them
        store = open_store(settings)
    if processes > 1:
        store.close()
        return serve_group(settings, processes, config_path, metrics, admin)
    tracing.configure(os.environ)
    runtime = build_runtime(settings, store=store, providers=providers)
    if parent is not None:
        watch_parent(int(parent), lambda: runtime.stop_reason.set(EXIT_OK, "parent process gone"))
    readiness = for_runtime(runtime, write_to=metrics if parent is not None else None)
    if runtime.parts.alerting is not None:
        runtime.parts.alerting.outage = outage_probe(readiness.state)
    if parent is None:
        ops = ops_server(settings, alive=lambda: runtime_alive(runtime), ready=readiness.state, admin=admin)
        if isinstance(ops, int):
            return ops

    def graceful(signum: int, _frame: FrameType | None) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        runtime.stop_reason.set(EXIT_OK, "signal")

    signal.signal(signal.SIGTERM, graceful)
    signal.signal(signal.SIGINT, graceful)
    signal.signal(signal.SIGUSR1, pykka.debug.log_thread_tracebacks)
    try:
        runtime.start(before_consuming=gate)
    except (BrokerUnavailableError, StoreError) as exc:
        click.echo(f"smeg: start failed: {exc}", err=True)
        runtime.stop(timeout=2)
        return exiting(EXIT_UNHEALTHY, f"start failed: {exc}")
    readiness.start()
    code = runtime.wait()
    exiting(code, runtime.stop_reason.reason)
    if code == EXIT_OK:

        def stop() -> None:
            runtime.stop(timeout=settings.shutdown_timeout)
            store.close()

        within(settings.shutdown_timeout + SHUTDOWN_MARGIN, stop)
    else:
        # A lost dependency: stopping actors blocked on it could take long. Exit now; the broker
        # requeues every unacked request, and the store holds every recorded step.
        click.echo(f"smeg: stopping (exit {code}): {runtime.stop_reason.reason}", err=True)
    if parent is None:
        remove_directory(metrics)
    tracing.shutdown()
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)


def serve_group(
    settings: Settings, processes: int, config_path: str | None, metrics: Path | None, admin: Any = None
) -> int:
    """``processes`` children, each a single ``smeg run``; one projector among them. This parent
    serves the group's ops HTTP endpoints."""
    config = ["--config", config_path] if config_path else []
    command = [sys.executable, "-m", "smeg_actors", *config, "run"]
    env = dict(os.environ, SMEG_PROCESSES="1", **{PARENT_PID_VARIABLE: str(os.getpid())})
    delivery_only = env | {"SMEG_PROJECTOR": "external"}
    commands = [
        (command, (env if index == 0 else delivery_only) | {GROUP_INDEX_VARIABLE: str(index)})
        for index in range(processes)
    ]
    group = ProcessGroup(commands, stop_timeout=settings.shutdown_timeout + 15)

    def ready() -> tuple[bool, list[str]]:
        pids = [child.process.pid for child in group.children]
        if len(pids) < processes:
            return False, [f"{len(pids)} of {processes} delivery processes started"]
        assert metrics is not None  # the server is on, so is the directory
        return group_readiness(metrics, pids)

    ops = ops_server(settings, alive=lambda: not group.reason, ready=ready, admin=admin)
    if isinstance(ops, int):
        return ops
    try:
        code = group.run()
    finally:
        remove_directory(metrics)
    if group.reason:
        click.echo(f"smeg: stopping (exit {code}): {group.reason}", err=True)
    return exiting(code, group.reason or "stopped")


def outage_probe(state: Probe) -> Callable[[], str | None]:
    """Why this process is no longer ready (its broker or store away), or None; None too before
    it was first ready (starting is no outage)."""
    was_ready = False

    def probe() -> str | None:
        nonlocal was_ready
        ready, reasons = state()
        was_ready = was_ready or ready
        return None if ready or not was_ready else "; ".join(reasons) or "not ready"

    return probe


def admin_app(settings: Settings) -> Any:
    """The admin API's WSGI app, or None when no token is configured (the API is off); a bad
    token setting is a SettingsError (exit 2), before any dependency is checked."""
    from smeg_actors.admin.auth import tokens_from

    try:
        tokens = tokens_from(os.environ, settings.admin.get("tokens", {}))
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if not tokens:
        return None
    from smeg_actors.admin.api import create_app

    log.info("admin_api_on", tokens=sorted(t.name for t in tokens))
    return create_app(settings, tokens)


def ops_server(
    settings: Settings, *, alive: Callable[[], bool], ready: Probe, queues: bool = True, admin: Any = None
) -> OpsServer | int:
    """The started ops HTTP server, None-like when ``SMEG_HTTP_PORT`` is 0, or exit 3 when its
    port cannot be had. With it, the readers of the projections' lag and (``queues``) of the
    queues' depths; ``admin``: the admin API's app, served under ``/api``."""
    server = OpsServer(settings.http_host, settings.http_port, alive=alive, ready=ready, admin=admin)
    if settings.http_port == 0:
        return server
    try:
        server.start()
    except OSError as exc:
        where = f"{settings.http_host}:{settings.http_port}"
        click.echo(f"smeg: ops HTTP server cannot listen on {where}: {exc.strerror or exc}", err=True)
        return exiting(EXIT_UNHEALTHY, f"ops HTTP port {where} unavailable")
    endpoints = [*ENDPOINTS, *(("/api", "/console/") if admin is not None else ())]
    log.info("ops_http_listening", host=settings.http_host, port=server.port, endpoints=endpoints)
    if queues:
        QueueWatch(settings.amqp_url, settings.queue_prefix).start()
    ProjectionWatch.of(settings).start()
    return server


#: Seconds a graceful stop may take beyond SMEG_SHUTDOWN_TIMEOUT (closing the store and the
#: actors after the in-flight attempts) before the process exits regardless.
SHUTDOWN_MARGIN = 15.0


def within(limit: float, stop: Callable[[], None]) -> None:
    """Run ``stop``; if it is still running after ``limit`` s, log every thread's stack and exit 0
    at once. A stop is a sum of bounded waits that can add up past the promised timeout; an
    orchestrator must never have to kill a process it asked to stop. Nothing is lost: what is
    not acked goes back to the broker, what is recorded is in the store."""
    timer = threading.Timer(limit, _overran, args=(limit,))
    timer.daemon = True
    timer.start()
    try:
        stop()
    finally:
        timer.cancel()


def _overran(limit: float) -> None:
    log.error("shutdown_overran", limit_s=limit)
    pykka.debug.log_thread_tracebacks()
    exiting(EXIT_OK, f"graceful stop overran {limit:g}s")
    sys.stderr.flush()
    os._exit(EXIT_OK)


def exiting(code: int, cause: str) -> int:
    """Log the process's exit with its code and cause: at error unless asked to stop (0)."""
    if code == EXIT_OK:
        log.info("process_exiting", exit_code=code, cause=cause)
    else:
        log.error("process_exiting", exit_code=code, cause=cause)
    return code
