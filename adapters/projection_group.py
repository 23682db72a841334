"""``step_together``: several projection runners stepped as one — one read and decode of the
log, one transaction, each runner advancing its own tracking position (``smeg projections run``
and the inline projector). A batch one runner cannot take is settled by each runner on its own
(``ProjectionRunner.settle``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import structlog
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from adapters.event_log import LogEntry
from adapters.event_store import MessageStore
from adapters.parked_events import describe_poison, is_poison
from adapters.projection_runner import ProjectionRunner, SharedHistory, Write
from adapters.tracking import advance_tracking, read_position

log = structlog.get_logger(__name__)

#: PostgreSQL's SQLSTATE for a transaction it rolled back to break a deadlock.
DEADLOCK_DETECTED = "40P01"


class _RaceLost(Exception):
    """Another runner advanced one of the positions first: roll the whole batch back."""


def _advance_or_raise(connection: Connection, *, name: str, start: int, end: int) -> None:
    if not advance_tracking(connection, name, start, end):
        raise _RaceLost(name)


def step_together(store: MessageStore, runners: Sequence[ProjectionRunner], batch: int = 1000) -> int:
    """One batch for several runners: one read and decode of the log, one transaction.

    Each runner applies the events after its own position and advances its own tracking row, all
    in the same transaction (one commit instead of one per read model). If any runner finds its
    position moved by another node, the whole batch rolls back and the next step starts afresh.
    Positions this function committed are kept on the runners and not read back (four queries a
    step, a sixth of the projector child's time); the advance's check catches a stale one.
    Returns how many events the furthest-behind runner applied.
    """
    if not runners:
        return 0
    engine = runners[0].engine
    positions = [runner.known_position for runner in runners]
    if None in positions:
        with engine.connect() as connection:
            positions = [read_position(connection, runner.name) for runner in runners]
    known = [position for position in positions if position is not None]
    start = min(known)
    decoded, end = store.read_events(start, batch)
    if end == start:
        return 0
    applied = 0
    advanced: list[ProjectionRunner] = []
    history = SharedHistory(store.histories)
    try:
        with engine.begin() as connection:
            writes: list[Write] = []
            for runner, position in zip(runners, known, strict=True):
                events = [event for at, event in decoded if at > position]
                runner.known_position = position
                if not events:
                    continue
                writes += [p.prepare(connection, events, history) for p in runner.projections]
                writes.append(partial(_advance_or_raise, name=runner.name, start=position, end=end))
                advanced.append(runner)
                applied = max(applied, len(events))
            for write in writes:
                write(connection)
    except _RaceLost as exc:
        _forget(runners)
        log.info("projection_race_lost", projection=str(exc), position=start)
        return 0
    except Exception as exc:
        if is_poison(exc):
            # One of the runners cannot take an event of the batch: each runner settles the
            # batch on its own, so that only the ones that fail split it.
            log.warning(
                "projection_batch_failed", position=start, events=len(decoded), error=describe_poison(exc)
            )
            return _settle_each(runners, known, decoded, end)
        _forget(runners)
        if isinstance(exc, IntegrityError):
            log.info("projection_race_lost", projection="insert", position=start)
            return 0
        # Two nodes' runners at different positions may update the same rows in different orders.
        if isinstance(exc, OperationalError) and getattr(exc.orig, "sqlstate", None) == DEADLOCK_DETECTED:
            log.info("projection_race_lost", projection="deadlock", position=start)
            return 0
        raise
    except BaseException:
        _forget(runners)
        raise
    for runner in advanced:
        runner.known_position = end
    return applied


def _settle_each(
    runners: Sequence[ProjectionRunner], positions: Sequence[int], decoded: Sequence[LogEntry], end: int
) -> int:
    """After a failed batch: each runner applies its part on its own (``ProjectionRunner.settle``)."""
    applied = 0
    try:
        for runner, position in zip(runners, positions, strict=True):
            entries = [(at, event) for at, event in decoded if at > position]
            if not entries:
                continue
            if not runner.settle(position, entries, end):
                _forget(runners)
                return 0
            runner.known_position = end
            applied = max(applied, len(entries))
    except BaseException:
        _forget(runners)
        raise
    return applied


def _forget(runners: Sequence[ProjectionRunner]) -> None:
    for runner in runners:
        runner.known_position = None
