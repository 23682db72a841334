"""The console's actions: retry or archive a failure group or one message (each behind a
confirmation that shows what a real run would change), set a flag, acknowledge an alert. Routes of
``console.blueprint`` (its guard has checked the session and the CSRF token); each needs the
operator role and is recorded with the token's name as ``by``, and logged.
"""

from __future__ import annotations

import secrets
from typing import Any

import structlog
from flask import abort, redirect, render_template, request, url_for

from domain.ports import ConflictError
from domain.request import one_line_text
from smeg_actors.admin import console_data as data
from smeg_actors.admin.auth import OPERATOR, Token
from smeg_actors.admin.console import blueprint, current_settings, require
from smeg_actors.runtime import fleet, ops_views

log = structlog.get_logger(__name__)


def _group(group_id: str) -> tuple[list[str], Any]:
    for group in fleet.failure_groups(current_settings()):
        if group.group_id == group_id:
            return group.message_ids, group
    abort(404, f"There is no failure group {group_id} now: its messages were retried or archived.")


@blueprint.get("/failures/<group_id>/<any(retry, archive):verb>")
def confirm_group(group_id: str, verb: str) -> Any:
    require(OPERATOR)
    ids, group = _group(group_id)
    return render_template("confirm.html", verb=verb, count=len(ids), group=group, message_id=None)


@blueprint.post("/failures/<group_id>/<any(retry, archive):verb>")
def act_on_group(group_id: str, verb: str) -> Any:
    token = require(OPERATOR)
    ids, group = _group(group_id)
    reason = _reason()
    if request.form.get("expected") != str(len(ids)):
        changed = f"The group changed since you looked: it holds {len(ids)} now."
        return render_template(
            "confirm.html", verb=verb, count=len(ids), group=group, message_id=None, notice=changed
        )
    return _act(token, ids, verb, reason, group=group)


@blueprint.get("/messages/<message_id>/<any(retry, archive):verb>")
def confirm_message(message_id: str, verb: str) -> Any:
    token = require(OPERATOR)
    change = fleet.retrying(token.name, "", None) if verb == "retry" else fleet.archiving(token.name, "")
    why = fleet.refusal(current_settings(), message_id, change)
    if why is not None:
        abort(404 if why == "unknown message id" else 409, f"Cannot {verb} {message_id}: {why}.")
    return render_template("confirm.html", verb=verb, count=1, group=None, message_id=message_id)


@blueprint.post("/messages/<message_id>/<any(retry, archive):verb>")
def act_on_message(message_id: str, verb: str) -> Any:
    token = require(OPERATOR)
    return _act(token, [message_id], verb, _reason(), group=None)


def _reason() -> str:
    try:
        return one_line_text(request.form.get("reason", ""))
    except ValueError as exc:
        abort(400, f"The reason {exc}.")


def _act(token: Token, ids: list[str], verb: str, reason: str, *, group: Any) -> Any:
    bulk_id = secrets.token_hex(6) if group is not None and verb == "retry" else None
    change = (
        fleet.retrying(token.name, reason, bulk_id)
        if verb == "retry"
        else fleet.archiving(token.name, reason)
    )
    done, refused = fleet.apply_each(current_settings(), ids, change)
    log.info("console_" + verb, by=token.name, count=len(done), refused=len(refused), bulk_id=bulk_id)
    return render_template(
        "done.html", verb=verb, done=done, refused=refused, bulk_id=bulk_id, group=group, reason=reason
    )


@blueprint.post("/flags/<name>")
def set_flag(name: str) -> Any:
    token = require(OPERATOR)
    reason = _reason()
    try:
        data.set_flag(
            current_settings(),
            name,
            request.form.get("value", ""),
            by=token.name,
            reason=reason,
            lasting=request.form.get("for", "").strip() or None,
        )
    except ValueError as exc:
        abort(400, str(exc))
    except ConflictError as exc:
        abort(409, str(exc))
    log.info("console_flag_set", by=token.name, flag=name, value=request.form.get("value"))
    return redirect(url_for("console.flags"))


@blueprint.post("/alerts/<alert_id>/ack")
def acknowledge_alert(alert_id: str) -> Any:
    token = require(OPERATOR)
    if ops_views.acknowledge_alert(current_settings(), alert_id, token.name) is None:
        abort(404, f"There is no alert {alert_id[:80]} now.")
    log.info("console_alert_acknowledged", by=token.name, alert_id=alert_id)
    return redirect(url_for("console.overview"))
