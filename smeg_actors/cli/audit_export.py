"""``smeg audit export``: stream every event of a time window as JSON lines, in constant memory."""

from __future__ import annotations

import json
from collections import OrderedDict
from datetime import datetime
from typing import TextIO
from uuid import UUID

from adapters.event_store import MessageStore
from domain.audit import event_record
from domain.message import Message

_CACHE_SIZE = 10_000


def export_events(store: MessageStore, out: TextIO, *, since: datetime | None, until: datetime | None) -> int:
    """Write the events whose timestamp lies in [since, until) to ``out``; return how many."""
    names: OrderedDict[UUID, str] = OrderedDict()
    count = 0
    for _position, event in store.iter_log():
        if isinstance(event, Message.Received):
            _remember(names, event.originator_id, event.message_id)
        if since is not None and event.timestamp < since:
            continue
        if until is not None and event.timestamp >= until:
            continue
        record = {"message_id": _client_id(store, names, event.originator_id)}
        record.update(event_record(event))
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def _remember(names: OrderedDict[UUID, str], key: UUID, message_id: str) -> None:
    names[key] = message_id
    names.move_to_end(key)
    if len(names) > _CACHE_SIZE:
        names.popitem(last=False)


def _client_id(store: MessageStore, names: OrderedDict[UUID, str], key: UUID) -> str:
    if key not in names:
        first = store.history_head(key)
        _remember(names, key, first.message_id)
    return names[key]
