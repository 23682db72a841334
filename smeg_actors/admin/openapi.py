"""The admin API's OpenAPI 3.1 document (served at ``/api/openapi.json``), written out: the
routes are few, and the document is the contract a client is built against."""

from __future__ import annotations

from typing import Any

_ITEM_MESSAGE = {
    "type": "object",
    "properties": {
        name: {"type": ["string", "null"]}
        for name in (
            "message_id",
            "status",
            "channel",
            "provider",
            "last_error",
            "to",
            "received_at",
            "updated_at",
        )
    }
    | {"attempts": {"type": "integer"}},
}
_GROUP = {
    "type": "object",
    "properties": {
        name: {"type": ["string", "null"]}
        for name in (
            "group_id",
            "provider",
            "reason_class",
            "reason",
            "first_failed_at",
            "last_failed_at",
            "sample_message_id",
        )
    }
    | {"count": {"type": "integer"}},
}
_ACTION_PROPERTIES: dict[str, Any] = {
    "reason": {"type": "string", "maxLength": 200},
    "dry_run": {"type": "boolean"},
}
_ACTION = {"type": "object", "required": ["reason"], "properties": _ACTION_PROPERTIES}
_FILTERED = {
    "type": "object",
    "required": ["reason", "filter"],
    "properties": _ACTION_PROPERTIES
    | {
        "filter": {
            "type": "object",
            "minProperties": 1,
            "description": "failed messages: through provider, on channel, whose last error contains "
            "reason_contains, received at or after since and before until (ISO 8601)",
            "properties": {
                k: {"type": "string"} for k in ("provider", "channel", "reason_contains", "since", "until")
            },
        }
    },
}
_FLAG = {
    "type": "object",
    "required": ["value", "reason"],
    "properties": {
        "value": {"type": "boolean"},
        "reason": {"type": "string", "maxLength": 200},
        "for_seconds": {"type": "integer", "minimum": 1},
    },
}
_FLAG_ITEM = {
    "type": "object",
    "properties": {k: {"type": ["string", "null"]} for k in ("name", "by", "reason", "expires_at")}
    | {"value": {"type": "boolean"}},
}
_DONE = {
    "type": "object",
    "properties": {
        "count": {"type": "integer"},
        "bulk_id": {"type": "string"},
        "refused": {"type": "array", "items": {"type": "object"}},
    },
}


def _list(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"items": {"type": "array", "items": item}, "next": {"type": ["string", "null"]}},
    }


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "401": {"description": "no valid token"},
    "403": {"description": "the token's role may not"},
}


def _get(summary: str, schema: dict[str, Any], parameters: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": [{"name": p, "in": "query", "schema": {"type": "string"}} for p in parameters],
            "responses": {"200": _json(schema), **_ERRORS},
        }
    }


def _post(summary: str, path_name: str | None, body: dict[str, Any] = _ACTION) -> dict[str, Any]:
    parameters = [{"name": path_name, "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "post": {
            "summary": summary + " (role operator; dry_run answers the count and changes nothing)",
            "parameters": parameters if path_name else [],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "200": _json(_DONE),
                "400": {"description": "a bad body"},
                "404": {"description": "no such message or group"},
                "409": {"description": "the message's state refuses it"},
                **_ERRORS,
            },
        }
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "smeg admin API",
            "version": "1",
            "description": "Bearer token (SMEG_ADMIN_TOKENS). Roles: viewer reads, operator acts, "
            "pii sees full addresses and bodies. Every change records the token's name as by.",
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/api/messages": _get(
                "Messages, newest first (cursor pages on)",
                _list(_ITEM_MESSAGE),
                (
                    "status",
                    "provider",
                    "channel",
                    "reason",
                    "since",
                    "until",
                    "failed_since",
                    "limit",
                    "cursor",
                ),
            ),
            "/api/messages/{message_id}": _get(
                "One message with its events (the smeg history --json list)", {"type": "object"}
            ),
            "/api/failures": _get("Failure groups, largest first", _list(_GROUP)),
            "/api/messages/retry": _post("Retry the failed messages a filter selects", None, _FILTERED),
            "/api/messages/archive": _post("Archive the failed messages a filter selects", None, _FILTERED),
            "/api/messages/{message_id}/retry": _post("Retry one message", "message_id"),
            "/api/messages/{message_id}/archive": _post("Archive one failed message", "message_id"),
            "/api/failures/{group_id}/retry": _post("Retry every message of a failure group", "group_id"),
            "/api/failures/{group_id}/archive": _post("Archive every message of a failure group", "group_id"),
            "/api/schedule": _get(
                "What falls due when, and what is held", {"type": "object"}, ("within", "provider")
            ),
            "/api/providers": _get("Each provider's state", _list({"type": "object"})),
            "/api/alerts": _get("Open alerts (all=true: resolved too)", _list({"type": "object"}), ("all",)),
            "/api/alerts/{alert_id}/ack": {
                "post": {
                    "summary": "Record that a person has seen an alert (role operator; by: the token name)",
                    "parameters": [
                        {"name": "alert_id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": _json({"type": "object"}),
                        "404": {"description": "no such alert"},
                        **_ERRORS,
                    },
                }
            },
            "/api/flags": _get(
                "The flags in force, with who set them, why and until when", _list(_FLAG_ITEM)
            ),
            "/api/flags/{name}": {
                "post": {
                    "summary": "Set a flag (role operator): delivery.paused, delivery.paused.sms, "
                    "delivery.paused.im, redrive.auto, canary.enabled",
                    "parameters": [
                        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _FLAG}}},
                    "responses": {
                        "200": _json({"type": "object"}),
                        "400": {"description": "a bad body"},
                        "404": {"description": "no such flag"},
                        "409": {"description": "set at the same moment by someone else: try again"},
                        **_ERRORS,
                    },
                }
            },
        },
    }
