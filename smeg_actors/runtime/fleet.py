"""The fleet operations behind ``smeg messages / failures / retry / archive`` and the admin API:
one place, so the command line and HTTP list, group and change messages the same way.

Every change is made through a message's aggregate, one message at a time (its own event, with
``by`` and the reason); a bulk retry shares one ``bulk_id``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from adapters.fleet_view import MessageQuery, MessageRow, failed_rows, list_messages
from domain.errors import DomainError
from domain.failures import FailureGroup, group_failures
from domain.message import Message
from domain.ports import MessageNotFoundError
from domain.request import mask_address
from smeg_actors.runtime.clock import utc_now
from smeg_actors.runtime.config import Settings
from smeg_actors.runtime.factory import open_store, read_models_engine


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def message_items(
    settings: Settings, query: MessageQuery, *, limit: int, cursor: str | None, pii: bool = False
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of messages as the lists show them, and the next page's cursor (ValueError: a
    cursor this list did not make). Addresses come from the aggregates, masked unless ``pii``."""
    engine = read_models_engine(settings)
    try:
        rows, following = list_messages(engine, query, limit=limit, cursor=cursor)
    finally:
        engine.dispose()
    if not rows:
        return [], following
    store = open_store(settings)
    try:
        addresses = [_address(store.get(row.id).to, pii) for row in rows]
    finally:
        store.close()
    return [message_item(row, to) for row, to in zip(rows, addresses, strict=True)], following


def _address(to: str, pii: bool) -> str:
    return to if pii else mask_address(to)


def message_item(row: MessageRow, to: str) -> dict[str, Any]:
    return {
        "message_id": row.message_id,
        "status": row.status,
        "channel": row.channel,
        "provider": row.provider,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "to": to,
        "received_at": iso(row.received_at),
        "updated_at": iso(row.updated_at),
    }


def failure_groups(settings: Settings) -> list[FailureGroup]:
    engine = read_models_engine(settings)
    try:
        return group_failures(failed_rows(engine))
    finally:
        engine.dispose()


def group_item(group: FailureGroup) -> dict[str, Any]:
    return {
        "group_id": group.group_id,
        "provider": group.provider,
        "reason_class": group.reason_class,
        "reason": group.reason,
        "count": group.count,
        "first_failed_at": iso(group.first_failed_at),
        "last_failed_at": iso(group.last_failed_at),
        "sample_message_id": group.sample_message_id,
    }


def group_members(settings: Settings, group_id: str) -> list[str] | None:
    """The message ids of a failure group (None: no such group now)."""
    found = [g for g in failure_groups(settings) if g.group_id == group_id]
    return found[0].message_ids if found else None


def filtered_failed(settings: Settings, query: MessageQuery) -> list[str]:
    """Every failed message a filter selects (its status is forced to failed)."""
    engine = read_models_engine(settings)
    selected = MessageQuery(
        status="failed",
        provider=query.provider,
        channel=query.channel,
        reason=query.reason,
        since=query.since,
        until=query.until,
    )
    ids: list[str] = []
    cursor: str | None = None
    try:
        while True:
            rows, cursor = list_messages(engine, selected, limit=1000, cursor=cursor)
            ids += [row.message_id for row in rows]
            if cursor is None:
                return ids
    finally:
        engine.dispose()


def retrying(by: str, reason: str, bulk_id: str | None) -> Callable[[Message], None]:
    """A person's retry: archived messages too (they named them)."""
    return lambda m: m.request_retry(by, now=utc_now(), reason=reason, bulk_id=bulk_id, archived_too=True)


def archiving(by: str, reason: str) -> Callable[[Message], None]:
    return lambda m: m.archive(by, reason=reason, now=utc_now())


def refusal(settings: Settings, message_id: str, change: Callable[[Message], None]) -> str | None:
    """What ``change`` would be refused with for one message, in the words the real change would
    use (tried on the aggregate in memory, never saved): a dry run that promises only what a
    real run would do. None: it would be made."""
    store = open_store(settings)
    try:
        message = store.get(Message.create_id(message_id))
    except MessageNotFoundError:
        return "unknown message id"
    finally:
        store.close()
    try:
        change(message)
    except DomainError as exc:
        return str(exc)
    return None


def apply_each(
    settings: Settings, ids: list[str], change: Callable[[Message], None], rate: float | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """Each message changed on its own (its own event), at most ``rate`` a second; returns
    (changed, [(id, why not)])."""
    store = open_store(settings)
    done: list[str] = []
    refused: list[tuple[str, str]] = []
    try:
        for message_id in ids:
            started = time.monotonic()
            try:
                outcome = store.update(Message.create_id(message_id), change)
            except MessageNotFoundError:
                refused.append((message_id, "unknown message id"))
                continue
            if outcome.refused is not None:
                refused.append((message_id, str(outcome.refused)))
            elif outcome.message is None:
                refused.append((message_id, "changed concurrently, try again"))
            else:
                done.append(message_id)
            if rate:
                time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - started)))
    finally:
        store.close()
    return done, refused
