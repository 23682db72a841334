"""Projections: SQL read models that follow the event log, exactly once — the names other code
imports, from the modules that hold them:

- ``adapters.projection_runner``: ``Projection``, ``ProjectionRunner`` (a batch and its tracking
  position in one transaction; a poison event isolated by splitting and parked), ``SharedHistory``;
- ``adapters.projection_group``: ``step_together`` (several runners, one read, one transaction);
- ``adapters.shadow_rebuild``: ``ShadowRebuild`` (replay into shadow tables, then swap them in);
- ``adapters.tracking``: the ``smeg_tracking`` table, ``read_position``, ``advance_tracking``,
  ``create_tables``.
"""

from __future__ import annotations

from adapters.projection_group import DEADLOCK_DETECTED, step_together
from adapters.projection_runner import History, Projection, ProjectionRunner, SharedHistory, Write
from adapters.shadow_rebuild import ShadowRebuild
from adapters.tracking import advance_tracking, create_tables, read_position, tracking

__all__ = [
    "DEADLOCK_DETECTED",
    "History",
    "Projection",
    "ProjectionRunner",
    "ShadowRebuild",
    "SharedHistory",
    "Write",
    "advance_tracking",
    "create_tables",
    "read_position",
    "step_together",
    "tracking",
]
