"""Events as plain records, for the audit views (history, export) and for publication.

Pure: turns a Message event into a JSON-ready dict under the names the issues give the fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from eventsourcing.domain import DomainEvent

from domain.request import mask_address

_INTERNAL = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})
_RENAMED = {"sender": "from"}


def event_record(event: DomainEvent) -> dict[str, Any]:
    """``type``, ``version``, ``timestamp`` and the event's own fields, datetimes as ISO 8601 UTC."""
    record: dict[str, Any] = {
        "type": type(event).__name__,
        "version": event.originator_version,
        "timestamp": _iso(event.timestamp),
    }
    for name, value in vars(event).items():
        if name in _INTERNAL:
            continue
        record[_RENAMED.get(name, name)] = _iso(value) if isinstance(value, datetime) else value
    return record


def public_record(event: DomainEvent) -> dict[str, Any]:
    """The record fit to leave smeg: no body, the recipient masked."""
    record = event_record(event)
    record.pop("body", None)
    if "to" in record:
        record["to"] = mask_address(record["to"])
    return record


def describe(record: dict[str, Any]) -> str:
    """One human-readable line for a record (recipient masked, body left out)."""
    kind = record["type"]
    head = f"{record['timestamp']}  v{record['version']:<3} {kind:<14}"
    if kind == "Received":
        extra = f"{record['channel']} to {mask_address(record['to'])}"
        if record.get("provider"):
            extra += f" via {record['provider']}"
    elif kind == "Attempted":
        extra = f"attempt {record['attempt']} via {record['provider']}"
    elif kind == "BackedOff":
        extra = (
            f"attempt {record['attempt']}: {record['reason']}; retry at {record['retry_at']}"
            f" (+{record['delay_seconds']:g}s)"
        )
    elif kind == "Delivered":
        extra = f"attempt {record['attempt']} via {record['provider']} as {record['provider_message_id']}"
    elif kind == "Failed":
        why = "permanent" if record["permanent"] else "retries exhausted"
        extra = f"attempt {record['attempt']}: {record['reason']} ({why})"
    elif kind == "RetryRequested":
        extra = f"by {record['requested_by']}"
        if record.get("reason"):
            extra += f": {record['reason']}"
        if record.get("bulk_id"):
            extra += f" (bulk {record['bulk_id']})"
    elif kind == "Archived":
        extra = f"by {record['by']}: {record['reason']}"
    else:
        extra = ""
    return f"{head} {extra}".rstrip()


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")
