"""The projector actor: keeps the read models in step with the log, a batch per tick."""

from __future__ import annotations

from typing import Any

import pykka
import structlog

from domain.ports import ReadModels
from smeg_actors.actors.messages import GetPositions, Tick
from smeg_actors.actors.supervisor import Supervised

log = structlog.get_logger(__name__)


class ProjectorActor(Supervised):
    """Applies new events to the read models; catches up fully when it starts."""

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        read_models: ReadModels,
        max_batches_per_tick: int = 20,
    ) -> None:
        super().__init__(name, supervisor)
        self.read_models, self.max_batches = read_models, max_batches_per_tick
        self.failing = False

    def on_start(self) -> None:
        applied = self.read_models.catch_up()
        positions = self.read_models.positions()
        for name, events in applied.items():
            log.info("projection_caught_up", projection=name, events=events, position=positions[name])

    def on_receive(self, message: Any) -> Any:
        match message:
            case Tick():
                self._step()
            case GetPositions():
                return self.read_models.positions()
            case _:
                log.warning("unknown_message_dropped", message=repr(message))
        return None

    def _step(self) -> None:
        try:
            for _ in range(self.max_batches):
                if not self.read_models.step():
                    break
        except Exception as exc:
            if not self.failing:
                log.warning("projection_step_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            self.failing = True
            return
        self.failing = False
