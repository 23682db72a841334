"""The admin HTTP API (Flask, WSGI), served under ``/api`` by the ops HTTP server when tokens are
configured: messages, failure groups, retry, archive, schedule, providers, alerts; the OpenAPI
document at ``/api/openapi.json``.

JSON in and out. Every route needs a token (``auth``): 401 without a valid one, 403 when its role
may not (reads: viewer; changes: operator), with no more detail. A change records the token's
name as ``by``. Lists answer ``{"items": [...], "next": cursor | null}`` with the CLI's ``--json``
keys. Addresses and bodies are masked unless the token has ``pii``. The Bearer header (never a
cookie) is what authenticates, so a browser cannot be made to send it by another site: the API
needs no CSRF token.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from flask import Flask, Response, g, jsonify, request

from adapters.fleet_view import STATUSES, MessageQuery
from domain.audit import event_record, public_record
from domain.ports import MessageNotFoundError
from domain.request import CHANNELS, one_line_text
from smeg_actors.admin.auth import OPERATOR, PII, VIEWER, Token, authenticate
from smeg_actors.admin.console import install as install_console
from smeg_actors.admin.flags_api import add_flag_routes
from smeg_actors.admin.openapi import document
from smeg_actors.cli.support import open_store as open_checked_store
from smeg_actors.runtime import fleet, ops_views
from smeg_actors.runtime.config import Settings
from smeg_actors.runtime.factory import open_store


class Problem(Exception):
    """An answer other than 200: its status and a one-line error."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error


def create_app(settings: Settings, tokens: list[Token]) -> Flask:
    app = Flask("smeg-admin")
    app.config.update(JSON_SORT_KEYS=False, MAX_CONTENT_LENGTH=64 * 1024)
    install_console(app, settings, tokens)  # /console: its session key, cookie settings and pages

    @app.before_request
    def authorise() -> Any:
        if request.path == "/console" or request.path.startswith("/console/"):
            return None  # the console's own sessions (console.guard)
        token = authenticate(tokens, request.headers.get("Authorization"))
        if token is None:
            return jsonify(error="unauthorized"), 401, {"WWW-Authenticate": 'Bearer realm="smeg"'}
        needed = VIEWER if request.method in ("GET", "HEAD") else OPERATOR  # every change: operator
        if not token.may(needed):
            return jsonify(error="forbidden"), 403
        g.token = token
        return None

    @app.errorhandler(Problem)
    def problem(exc: Problem) -> Any:
        return jsonify(error=exc.error), exc.status

    @app.errorhandler(404)
    def not_found(_exc: Exception) -> Any:
        return jsonify(error="not found"), 404

    @app.errorhandler(405)
    def not_allowed(_exc: Exception) -> Any:
        return jsonify(error="method not allowed"), 405

    @app.errorhandler(413)
    def too_large(_exc: Exception) -> Any:
        return jsonify(error="request body too large"), 413

    @app.get("/api/openapi.json")
    def openapi() -> Any:
        return jsonify(document())

    @app.get("/api/messages")
    def list_messages() -> Any:
        args = request.args
        limit = _int(args.get("limit"), 50, 1, 1000, "limit")
        for name, known in (("status", STATUSES), ("channel", CHANNELS)):
            if args.get(name) and args[name] not in known:
                raise Problem(400, f"{name} must be one of: {', '.join(known)}")
        query = MessageQuery(
            status=args.get("status") or None,
            provider=args.get("provider") or None,
            channel=args.get("channel") or None,
            reason=args.get("reason") or None,
            since=_time(args.get("since"), "since"),
            until=_time(args.get("until"), "until"),
            failed_since=_time(args.get("failed_since"), "failed_since"),
        )
        try:
            items, following = fleet.message_items(
                settings, query, limit=limit, cursor=args.get("cursor") or None, pii=g.token.may(PII)
            )
        except ValueError as exc:
            raise Problem(400, str(exc)) from None
        return jsonify(items=items, next=following)

    @app.get("/api/messages/<message_id>")
    def one_message(message_id: str) -> Any:
        pii = g.token.may(PII)
        store = open_store(settings)
        try:
            message = store.get_by_message_id(message_id)
            events = [(event_record if pii else public_record)(e) for e in store.history(message.id)]
        except MessageNotFoundError:
            raise Problem(404, f"unknown message id: {message_id}") from None
        finally:
            store.close()
        found = events[0] if events else {}
        return jsonify(
            message_id=message_id,
            status=message.status,
            channel=message.channel,
            provider=message.last_provider,
            attempts=message.attempts,
            last_error=message.last_error,
            to=found.get("to"),
            body=message.body if pii else None,
            events=events,
        )

    @app.get("/api/failures")
    def failure_groups() -> Any:
        return jsonify(items=[fleet.group_item(g) for g in fleet.failure_groups(settings)], next=None)

    @app.post("/api/messages/<message_id>/retry")
    def retry_message(message_id: str) -> Any:
        return _act(settings, [message_id], "retry", bulk=False)

    @app.post("/api/messages/retry")
    def retry_filtered() -> Any:
        return _act(settings, _filtered(settings), "retry", bulk=True)

    @app.post("/api/messages/archive")
    def archive_filtered() -> Any:
        return _act(settings, _filtered(settings), "archive", bulk=True)

    @app.post("/api/failures/<group_id>/retry")
    def retry_group(group_id: str) -> Any:
        return _act(settings, _members(settings, group_id), "retry", bulk=True)

    @app.post("/api/messages/<message_id>/archive")
    def archive_message(message_id: str) -> Any:
        return _act(settings, [message_id], "archive", bulk=False)

    @app.post("/api/failures/<group_id>/archive")
    def archive_group(group_id: str) -> Any:
        return _act(settings, _members(settings, group_id), "archive", bulk=True)

    @app.get("/api/schedule")
    def schedule() -> Any:
        within = timedelta(seconds=_int(request.args.get("within"), 3600, 60, 7 * 86400, "within"))
        found = ops_views.read_schedule(
            settings, within, request.args.get("provider"), open_store=open_checked_store
        )
        return jsonify(ops_views.schedule_record(found))

    @app.get("/api/providers")
    def providers() -> Any:
        return jsonify(items=ops_views.provider_rows(settings, open_store=open_checked_store), next=None)

    @app.get("/api/alerts")
    def alerts() -> Any:
        everything = request.args.get("all") == "true"
        return jsonify(
            items=ops_views.alert_rows(settings, everything=everything, open_store=open_checked_store),
            next=None,
        )

    @app.post("/api/alerts/<alert_id>/ack")
    def acknowledge(alert_id: str) -> Any:
        found = ops_views.acknowledge_alert(settings, alert_id, g.token.name, open_store=open_checked_store)
        if found is None:
            raise Problem(404, f"no alert {alert_id[:80]}")
        return jsonify(alert_id=alert_id, rule=found[0], key=found[1], acknowledged_by=g.token.name)

    add_flag_routes(app, settings, Problem)
    return app


def _members(settings: Settings, group_id: str) -> list[str]:
    members = fleet.group_members(settings, group_id)
    if members is None:
        raise Problem(404, f"no failure group {group_id}")
    return members


#: What a filter of ``POST /api/messages/retry`` may name (``smeg retry``'s filter options).
FILTER_KEYS = ("provider", "channel", "reason_contains", "since", "until")


def _filtered(settings: Settings) -> list[str]:
    """The failed messages the body's ``filter`` selects (at least one key: never all by omission)."""
    body = request.get_json(silent=True)
    chosen = body.get("filter") if isinstance(body, dict) else None
    if not isinstance(chosen, dict) or not chosen:
        raise Problem(400, f"filter must be an object with at least one of: {', '.join(FILTER_KEYS)}")
    unknown = sorted(set(chosen) - set(FILTER_KEYS))
    if unknown:
        raise Problem(400, f"unknown filter key {unknown[0]}; known: {', '.join(FILTER_KEYS)}")
    if not all(isinstance(v, str) and v for v in chosen.values()):
        raise Problem(400, "filter values must be non-empty strings")
    query = MessageQuery(
        status="failed",
        provider=chosen.get("provider"),
        channel=chosen.get("channel"),
        reason=chosen.get("reason_contains"),
        since=_time(chosen.get("since"), "since"),
        until=_time(chosen.get("until"), "until"),
    )
    return fleet.filtered_failed(settings, query)


def _act(settings: Settings, ids: list[str], verb: str, *, bulk: bool) -> Response:
    """A retry or an archive of ``ids``: the body is ``{"reason": str, "dry_run": bool}``."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise Problem(400, 'the body must be a JSON object: {"reason": "...", "dry_run": false}')
    reason, dry_run = _reason(body.get("reason")), body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise Problem(400, "dry_run must be true or false")
    by: str = g.token.name
    bulk_id = uuid.uuid4().hex[:12] if bulk and verb == "retry" else None
    change = fleet.retrying(by, reason, bulk_id) if verb == "retry" else fleet.archiving(by, reason)
    if dry_run and not bulk:  # one message: answer as the real request would
        why = fleet.refusal(settings, ids[0], change)
        refused = [(ids[0], why)] if why else []
        done: list[str] = [] if why else ids
    elif dry_run:
        return jsonify(count=len(ids))
    else:
        done, refused = fleet.apply_each(settings, ids, change)
    if not bulk and refused:
        status = 404 if refused[0][1] == "unknown message id" else 409
        raise Problem(status, f"cannot {verb} {refused[0][0]}: {refused[0][1]}")
    if dry_run:
        return jsonify(count=len(done))
    answer: dict[str, Any] = {
        "count": len(done),
        "refused": [{"message_id": m, "why": w} for m, w in refused],
    }
    if bulk_id:
        answer["bulk_id"] = bulk_id
    return jsonify(answer)


def _reason(value: object) -> str:
    try:
        return one_line_text(value)
    except ValueError as exc:
        raise Problem(400, f"reason {exc}") from None


def _int(value: str | None, default: int, low: int, high: int, name: str) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise Problem(400, f"{name} must be a whole number") from None
    if not low <= number <= high:
        raise Problem(400, f"{name} must be {low} to {high}")
    return number


def _time(value: str | None, name: str) -> Any:
    from smeg_actors.cli.support import parse_time

    if not value:
        return None
    try:
        return parse_time(value, name)
    except Exception:
        raise Problem(400, f"{name} must be an ISO 8601 time") from None
