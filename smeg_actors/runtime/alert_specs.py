"""The alert evaluator's place in the actor tree (none without an alert store)."""

from __future__ import annotations

from typing import Any

from smeg_actors.actors.alerts import AlertEvaluatorActor
from smeg_actors.actors.supervisor import ChildSpec
from smeg_actors.runtime.clock import Clock


def alert_specs(alerting: Any, clock: Clock) -> list[ChildSpec]:
    """``alerting``: a ``runtime.alerting.Alerting`` (its sensors set before the start), or None."""
    if alerting is None or not alerting.sensors:
        return []
    return [
        ChildSpec(
            "alerts",
            lambda sup: AlertEvaluatorActor.start(
                "alerts",
                sup,
                repository=alerting.repository,
                rules=alerting.rules,
                sensors=alerting.sensors,
                sinks=alerting.sinks,
                clock=clock,
                outage=lambda: alerting.outage() if alerting.outage is not None else None,
                paused=lambda: alerting.paused() if alerting.paused is not None else None,
            ),
        )
    ]
