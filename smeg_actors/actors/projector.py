"""The projector actor: keeps the read models in step with the log, a batch per tick."""

from __future__ import annotations

from typing import Any

import pykka
import structlog

from adapters.projections import ProjectionRunner, step_together
from smeg_actors.actors.messages import Tick
from smeg_actors.actors.supervisor import Supervised

log = structlog.get_logger(__name__)


class ProjectorActor(Supervised):
    """Applies new events to the read models; catches up fully when it starts."""

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        runners: list[ProjectionRunner],
        max_batches_per_tick: int = 20,
    ) -> None:
        super().__init__(name, supervisor)
        self.runners, self.max_batches = runners, max_batches_per_tick
        self.failing = False

    def on_start(self) -> None:
        for runner in self.runners:
            applied = runner.catch_up()
            log.info(
                "projection_caught_up", projection=runner.name, events=applied, position=runner.position()
            )

    def on_receive(self, message: Any) -> Any:
        match message:
            case Tick():
                self._step()
            case "positions":
                return {runner.name: runner.position() for runner in self.runners}
            case _:
                log.warning("unknown_message_dropped", message=repr(message))
        return None

    def _step(self) -> None:
        try:
            for _ in range(self.max_batches):
                if not step_together(self.runners[0].store, self.runners):
                    break
        except Exception as exc:
            if not self.failing:
                log.warning("projection_step_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            self.failing = True
            return
        self.failing = False
