"""The admin API's flags: ``GET /api/flags`` (the ``smeg flags --json`` list) and
``POST /api/flags/{name}`` (``{"value": bool, "reason": str, "for_seconds": n?}``), recorded with
the token's name as ``by``. Registered by ``api.create_app``; its POST needs the operator role
like every other change."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask import Flask, g, jsonify, request

from domain.flags import KNOWN, spec_of
from domain.ports import ConflictError
from domain.request import one_line_text
from smeg_actors.runtime import ops_views
from smeg_actors.runtime.clock import utc_now
from smeg_actors.runtime.config import Settings
from smeg_actors.runtime.factory import open_store

#: The longest ``for_seconds`` (as ``--for``: a year and a day).
MAX_FOR = 366 * 86400


def add_flag_routes(app: Flask, settings: Settings, problem: Callable[[int, str], Exception]) -> None:
    """``problem(status, error)`` is the API's error answer."""

    @app.get("/api/flags")
    def list_flags() -> Any:
        return jsonify(items=ops_views.flag_rows(ops_views.read_flags(settings)), next=None)

    @app.post("/api/flags/<name>")
    def set_flag(name: str) -> Any:
        if name not in KNOWN:
            raise problem(404, f"unknown flag: {name}")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise problem(400, 'the body must be a JSON object: {"value": true, "reason": "..."}')
        value, reason, lasting = body.get("value"), body.get("reason"), body.get("for_seconds")
        if not isinstance(value, bool):
            raise problem(400, "value must be true or false")
        try:
            reason = one_line_text(reason)
        except ValueError as exc:
            raise problem(400, f"reason {exc}") from None
        if lasting is not None and (
            isinstance(lasting, bool) or not isinstance(lasting, int) or not 1 <= lasting <= MAX_FOR
        ):
            raise problem(400, f"for_seconds must be a whole number of seconds, 1 to {MAX_FOR}")
        spec_of(name)
        now = utc_now()
        until = now + timedelta(seconds=lasting) if lasting is not None else None
        store = open_store(settings)
        try:
            ops_views.set_flag(store, name, value, by=g.token.name, reason=reason, now=now, until=until)
        except ValueError as exc:
            raise problem(400, str(exc)) from None
        except ConflictError as exc:
            raise problem(409, str(exc)) from None
        finally:
            store.close()
        return jsonify(
            name=name, value=value, by=g.token.name, expires_at=until.isoformat() if until else None
        )
