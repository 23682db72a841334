"""``smeg run``: check the dependencies, start the runtime, stop on a signal or a fatal loss."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

import click
import pykka.debug
import structlog

from adapters.event_store import MessageStore, StoreError
from adapters.rabbitmq import BrokerUnavailableError
from smeg_actors.config import Settings
from smeg_actors.exit_codes import EXIT_OK, EXIT_UNHEALTHY
from smeg_actors.health import dependency_checks, run_checks
from smeg_actors.wiring import build_providers, build_runtime, open_store

log = structlog.get_logger(__name__)


def serve(settings: Settings) -> int:
    """Run until stopped; the process exits with the returned code (see exit_codes)."""
    providers = build_providers(settings)
    stores: list[MessageStore] = []

    def open_checked_store() -> MessageStore:
        stores.append(open_store(settings))
        return stores[-1]

    healthy, lines = run_checks(dependency_checks(settings, open_checked_store, providers))
    for line in lines:
        click.echo(line, err=True)
    if not healthy:
        return EXIT_UNHEALTHY
    store = stores[0]
    runtime = build_runtime(settings, store, providers)

    def graceful(signum: int, _frame: FrameType | None) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        runtime.stop_reason.set(EXIT_OK, "signal")

    signal.signal(signal.SIGTERM, graceful)
    signal.signal(signal.SIGINT, graceful)
    signal.signal(signal.SIGUSR1, pykka.debug.log_thread_tracebacks)
    try:
        runtime.start()
    except (BrokerUnavailableError, StoreError) as exc:
        click.echo(f"smeg: start failed: {exc}", err=True)
        runtime.stop(timeout=2)
        return EXIT_UNHEALTHY
    code = runtime.wait()
    if code == EXIT_OK:
        runtime.stop(timeout=settings.shutdown_timeout)
        store.close()
    else:
        # A lost dependency: stopping actors blocked on it could take long. Exit now; the broker
        # requeues every unacked request, and the store holds every recorded step.
        click.echo(f"smeg: stopping (exit {code}): {runtime.stop_reason.reason}", err=True)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)
