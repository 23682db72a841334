"""The start-up check: the store (a round trip), the read models' database when it is another
one, the broker (connect and declare), each provider.

``smeg check`` and ``smeg run`` print one line per dependency and exit 3 on any failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from adapters.event_store import MessageStore, StoreError
from adapters.rabbitmq import BrokerUnavailableError, Topology, check_broker
from domain.ports import Provider, ProviderUnhealthyError
from smeg_actors.runtime import tracing
from smeg_actors.runtime.config import Settings
from smeg_actors.runtime.factory import read_models_engine

#: A dependency's name and its check, which raises with a one-line reason or returns a note.
Check = tuple[str, Callable[[], str | None]]


def dependency_checks(
    settings: Settings, store: Callable[[], MessageStore], providers: dict[str, Provider]
) -> list[Check]:
    """The checks to run, in order; each raises with a one-line reason."""

    def check_store() -> None:
        opened = store()
        opened.ping()

    def check_read_models() -> None:
        engine = read_models_engine(settings)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            reason = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
            raise StoreError(_one_line(reason)) from None
        finally:
            engine.dispose()

    checks: list[Check] = [("store", check_store)]
    if settings.read_models_database_url != settings.database_url:
        checks.append(("read models", check_read_models))

    def check_rabbitmq() -> str | None:
        topology = Topology(settings.queue_prefix)
        if check_broker(settings.amqp_url, topology):
            return None
        fix = topology.poison_policy_command()
        return f"warning: {topology.send} has no poison-message handling; run: {fix}"

    checks.append(("broker", check_rabbitmq))
    for name, provider in providers.items():
        checks.append((f"provider {name}", provider.check_health))
    if tracing.wanted(os.environ):
        checks.append(("tracing", lambda: tracing.check(os.environ)))
    return checks


@dataclass(frozen=True)
class CheckResult:
    """One dependency's verdict: ``detail`` is the failure's reason, or a note on a pass."""

    name: str
    ok: bool
    detail: str | None = None

    def line(self) -> str:
        if not self.ok:
            return f"{self.name}: FAILED: {self.detail}"
        return f"{self.name}: ok ({self.detail})" if self.detail else f"{self.name}: ok"

    def as_json(self) -> dict[str, object]:
        return {"dependency": self.name, "ok": self.ok, "detail": self.detail}


def run_checks(checks: list[Check]) -> tuple[bool, list[CheckResult]]:
    """Run every check; return whether all passed, and each dependency's verdict."""
    results = []
    for name, check in checks:
        try:
            note = check()
        except (
            StoreError,
            BrokerUnavailableError,
            ProviderUnhealthyError,
            OSError,
            tracing.TracingUnavailableError,
        ) as exc:
            results.append(CheckResult(name, False, _one_line(exc)))
        else:
            results.append(CheckResult(name, True, note))
    return all(result.ok for result in results), results


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__
