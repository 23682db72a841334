"""The admin console: server-rendered pages under ``/console`` (Jinja2, a little htmx, every asset
in ``static/``: no CDN), over the same ``runtime/fleet`` operations as the admin API.

Pages: overview, failure groups (retry / archive a group after a confirmation showing how many it
holds), message search, one message's timeline, the schedule, the flags (the delivery pause).

Sessions: a person logs in with an admin token's secret; the session (Flask's signed cookie:
HttpOnly, SameSite=Strict, ``Secure`` with ``SMEG_ADMIN_SECURE_COOKIE=true``, valid
``SESSION_HOURS``) holds the token's *name*, a fingerprint of its hash (a removed or re-keyed
token ends its sessions) and a CSRF token, never the secret. The signing key is
``SMEG_ADMIN_SESSION_KEY`` or, unset, random per process: sessions end when smeg restarts. The
role is read from the configured token on every request: viewer reads (addresses masked),
operator acts, ``+pii`` sees full addresses and bodies. Every change records the token's name as
``by``. Every POST needs the session's CSRF token (form field or ``X-CSRF-Token``): 403 otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from adapters.fleet_view import STATUSES, MessageQuery
from domain.ports import MessageNotFoundError, StoreError
from domain.request import CHANNELS
from smeg_actors.admin import console_data as data
from smeg_actors.admin.auth import OPERATOR, PII, Token, authenticate
from smeg_actors.cli.support import CommandError
from smeg_actors.runtime import fleet
from smeg_actors.runtime.clock import utc_now
from smeg_actors.runtime.config import Settings, SettingsError

log = structlog.get_logger(__name__)

KEY_VARIABLE = "SMEG_ADMIN_SESSION_KEY"
SECURE_VARIABLE = "SMEG_ADMIN_SECURE_COOKIE"
MIN_KEY = 32
SESSION_HOURS = 12
CSRF_FIELD, CSRF_HEADER = "csrf_token", "X-CSRF-Token"
PAGE = 50
#: What a person may see without logging in: the login form and the stylesheet and script.
OPEN_ENDPOINTS = frozenset({"console.login", "console.static"})
#: Where a login may lead: a page of the console, with its query.
NEXT_RE = re.compile(r"/console/[A-Za-z0-9._:/?=&%+-]*")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

blueprint = Blueprint(
    "console", __name__, url_prefix="/console", template_folder="templates", static_folder="static"
)


@dataclass(frozen=True)
class Console:
    settings: Settings
    tokens: list[Token]


def install(
    app: Flask, settings: Settings, tokens: list[Token], environ: Mapping[str, str] = os.environ
) -> None:
    """The app's session key and cookie settings, and the console's routes."""
    app.secret_key = session_key(environ)
    app.config.update(
        SESSION_COOKIE_NAME="smeg_console",
        SESSION_COOKIE_PATH="/console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=secure_cookie(environ),
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        SESSION_REFRESH_EACH_REQUEST=False,  # SESSION_HOURS from logging in, however busy
    )
    app.extensions["smeg_console"] = Console(settings, tokens)
    from smeg_actors.admin import console_actions  # noqa: F401  (its routes join the blueprint)

    app.register_blueprint(blueprint)


def session_key(environ: Mapping[str, str]) -> bytes:
    """``SMEG_ADMIN_SESSION_KEY`` (shared by restarts and replicas), else random per process."""
    configured = environ.get(KEY_VARIABLE, "")
    if not configured:
        return secrets.token_bytes(32)
    if len(configured) < MIN_KEY:
        raise SettingsError(f"{KEY_VARIABLE} must be at least {MIN_KEY} characters")
    return configured.encode()


def secure_cookie(environ: Mapping[str, str]) -> bool:
    """``SMEG_ADMIN_SECURE_COOKIE``: true when the console is reached over HTTPS (a proxy's TLS)."""
    value = environ.get(SECURE_VARIABLE, "").strip().lower()
    if value not in ("", "true", "false", "1", "0", "yes", "no", "on", "off"):
        raise SettingsError(f"{SECURE_VARIABLE} must be true or false, not {value[:20]!r}")
    return value in ("true", "1", "yes", "on")


def _console() -> Console:
    found: Console = current_app.extensions["smeg_console"]
    return found


def current_settings() -> Settings:
    return _console().settings


def fingerprint(token: Token) -> str:
    """Ties a session to the token's current secret; keyed, so the (readable) cookie gives
    nothing to test guesses of the secret against."""
    key = current_app.secret_key
    assert isinstance(key, bytes)
    return hmac.new(key, token.digest, hashlib.sha256).hexdigest()[:32]


def _session_token() -> Token | None:
    name = session.get("name")
    for token in _console().tokens if name else []:
        if token.name == name and hmac.compare_digest(session.get("key", ""), fingerprint(token)):
            return token
    return None


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    value: str = session["csrf"]
    return value


@blueprint.before_request
def guard() -> Any:
    """A session for every page but the login; the CSRF token on every POST."""
    token = _session_token()
    if token is None and session.get("name"):
        session.clear()  # its token was removed or re-keyed
    g.token = token
    if request.endpoint in OPEN_ENDPOINTS and request.method == "GET":
        return None
    if request.method == "POST":
        sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
        expected = session.get("csrf")
        if not expected or not hmac.compare_digest(sent.encode(), str(expected).encode()):
            abort(403, "The form's security token did not match: reload the page and try again.")
    if token is None and request.endpoint != "console.login":
        if request.headers.get("HX-Request"):
            return Response(status=401, headers={"HX-Redirect": url_for("console.login")})
        return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
    return None


@blueprint.after_request
def secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


@blueprint.app_context_processor
def helpers() -> dict[str, Any]:
    token: Token | None = g.get("token")
    return {
        "csrf_token": csrf_token,
        "me": token,
        "may_act": token is not None and token.may(OPERATOR),
        "pii": token is not None and token.may(PII),
        "session_hours": SESSION_HOURS,
    }


for _name, _filter in (("percent", data.percent), ("ms", data.milliseconds), ("when", data.when)):
    blueprint.add_app_template_filter(_filter, _name)


@blueprint.errorhandler(400)
@blueprint.errorhandler(403)
@blueprint.errorhandler(404)
@blueprint.errorhandler(409)
def failed(exc: Any) -> Any:
    return render_template("error.html", code=exc.code, description=exc.description), exc.code


@blueprint.errorhandler(StoreError)
@blueprint.errorhandler(CommandError)
def store_error(exc: Exception) -> Any:
    return render_template("error.html", code=503, description=f"The store did not answer: {exc}"), 503


def require(role: str) -> Token:
    token: Token = g.token
    if not token.may(role):
        abort(403, f"Your token ({token.name}) may look but not act: an operator token is needed.")
    return token


def _safe_next(target: str | None) -> str:
    """Only a page of the console (never another site) after logging in."""
    if target and NEXT_RE.fullmatch(target) and "//" not in target and ".." not in target:
        return target
    return url_for("console.overview")


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        return render_template("login.html", next=request.args.get("next", ""))
    token = authenticate(_console().tokens, "Bearer " + request.form.get("token", "").strip())
    if token is None:
        log.warning("console_login_refused")
        return render_template("login.html", next=request.form.get("next", ""), refused=True), 401
    session.clear()
    session.permanent = True
    session.update(name=token.name, key=fingerprint(token), csrf=secrets.token_urlsafe(32))
    log.info("console_login", by=token.name)
    return redirect(_safe_next(request.form.get("next")))


@blueprint.post("/logout")
def logout() -> Any:
    log.info("console_logout", by=g.token.name)
    session.clear()
    return redirect(url_for("console.login"))


@blueprint.get("/")
def overview() -> Any:
    return render_template("overview.html", **data.overview(current_settings()))


@blueprint.get("/failures")
def failures() -> Any:
    groups = fleet.failure_groups(current_settings())
    return render_template("failures.html", groups=groups)


@blueprint.get("/messages")
def messages() -> Any:
    args = request.args
    wanted = args.get("id", "").strip()
    if wanted:
        return redirect(url_for("console.message", message_id=wanted))
    status = args.get("status") or None
    if status is not None and status not in STATUSES:
        abort(400, f"Unknown status {status[:40]!r}.")
    query = MessageQuery(
        status=status,
        provider=args.get("provider") or None,
        channel=args.get("channel") or None,
        reason=args.get("reason") or None,
        failed_since=_failed_within(args.get("failed_within")),
    )
    try:
        items, following = fleet.message_items(
            current_settings(), query, limit=PAGE, cursor=args.get("cursor") or None, pii=g.token.may(PII)
        )
    except ValueError as exc:
        abort(400, str(exc))
    filters = {k: v for k, v in args.items() if k != "cursor" and v}
    return render_template(
        "messages.html",
        items=items,
        following=following,
        filters=filters,
        statuses=STATUSES,
        channels=CHANNELS,
        providers=sorted(current_settings().provider_configs()),
    )


@blueprint.get("/messages/<message_id>")
def message(message_id: str) -> Any:
    try:
        found = data.timeline(current_settings(), message_id, pii=g.token.may(PII))
    except MessageNotFoundError:
        abort(404, f"No message has the id {message_id[:200]!r}.")
    return render_template("message.html", **found)


@blueprint.get("/schedule")
def schedule() -> Any:
    within = request.args.get("within", "10m")
    if within not in data.WINDOWS:
        within = "10m"
    provider = request.args.get("provider") or None
    found = data.schedule(current_settings(), data.WINDOWS[within], provider)
    providers = sorted(current_settings().provider_configs())
    return render_template(
        "schedule.html", windows=data.WINDOWS, within=within, provider=provider, providers=providers, **found
    )


@blueprint.get("/flags")
def flags() -> Any:
    return render_template("flags.html", rows=data.flag_rows(current_settings()))


#: The console's "failed within" choices: what failed in that time, whatever became of it since.
FAILED_WITHIN = {"1h": timedelta(hours=1), "today": None, "24h": timedelta(hours=24), "7d": timedelta(days=7)}


def _failed_within(choice: str | None) -> datetime | None:
    if not choice:
        return None
    if choice not in FAILED_WITHIN:
        abort(400, f"Unknown failed-within choice {choice[:20]!r}.")
    now = utc_now()
    span = FAILED_WITHIN[choice]
    return now - span if span is not None else now.replace(hour=0, minute=0, second=0, microsecond=0)
