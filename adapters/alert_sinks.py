"""Where alerts are told: the log (always), a webhook (JSON, with a Slack-compatible ``text``), or
Prometheus Alertmanager's v2 API. Each HTTP sink tries 3 times with a short backoff, then raises
(the evaluator records the failure); nothing here is on the delivery path.

The webhook's body (contract): ``{"status": "firing" | "resolved", "rule", "key", "severity",
"summary", "labels", "value", "raised_at", "resolved_at", "alert_id", "text"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import httpx
import structlog
from tenacity import retry, stop_after_attempt, wait_exponential

from domain.alert import FIRING, RESOLVED, Alert

log = structlog.get_logger(__name__)

#: Seconds for each HTTP call of a sink.
TIMEOUT = 5.0


def webhook_body(alert: Alert) -> dict[str, Any]:
    """The webhook's JSON (see the module docstring)."""
    status = "firing" if alert.status == FIRING else "resolved"
    text = f"[{status.upper()}] {alert.rule} {alert.key}: {alert.summary}"
    return {
        "status": status,
        "rule": alert.rule,
        "key": alert.key,
        "severity": alert.severity,
        "summary": alert.summary,
        "labels": dict(alert.labels),
        "value": alert.value,
        "raised_at": _iso(alert.raised_at or alert.since),
        "resolved_at": _iso(alert.resolved_at) if alert.status == RESOLVED else None,
        "alert_id": alert.alert_id,
        "text": text,
    }


def alertmanager_body(alert: Alert) -> list[dict[str, Any]]:
    """One alert for ``POST /api/v2/alerts``; ``endsAt`` set once it is resolved."""
    labels = {"alertname": f"smeg_{alert.rule}", "key": alert.key, "severity": alert.severity, **alert.labels}
    item: dict[str, Any] = {
        "labels": labels,
        "annotations": {"summary": alert.summary, "alert_id": alert.alert_id},
        "startsAt": _iso(alert.raised_at or alert.since),
    }
    if alert.status == RESOLVED and alert.resolved_at is not None:
        item["endsAt"] = _iso(alert.resolved_at)
    return [item]


class SinkError(Exception):
    """A sink could not be told; the text is safe to log and record."""


class LogSink:
    """A firing alert at warning (error when critical); a resolve at info."""

    name = "log"

    def notify(self, alert: Alert) -> None:
        level = logging.INFO
        if alert.status == FIRING:
            level = logging.ERROR if alert.severity == "critical" else logging.WARNING
        log.log(
            level,
            "alert_firing" if alert.status == FIRING else "alert_resolved",
            rule=alert.rule,
            key=alert.key,
            alert_id=alert.alert_id,
            severity=alert.severity,
            summary=alert.summary,
            value=alert.value,
        )


class HttpSink:
    """A webhook or Alertmanager: POSTs each change (bearer token from ``token``, if any)."""

    def __init__(self, name: str, kind: str, url: str, *, token: str | None = None) -> None:
        if kind not in ("webhook", "alertmanager"):
            raise ValueError(f"alert sink {name}: type must be webhook or alertmanager")
        self.name, self.kind = name, kind
        #: Alertmanager forgets an alert not re-sent within its resolve_timeout (5 min).
        self.repeats = kind == "alertmanager"
        self.url = url.rstrip("/") + "/api/v2/alerts" if kind == "alertmanager" else url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(timeout=TIMEOUT, headers=headers)

    def notify(self, alert: Alert) -> None:
        """Raises SinkError, whose text names the host and never the URL (it may hold a secret)."""
        body: Any = webhook_body(alert) if self.kind == "webhook" else alertmanager_body(alert)
        host = httpx.URL(self.url).host
        try:
            self._post(body)
        except httpx.HTTPStatusError as exc:
            raise SinkError(f"HTTP {exc.response.status_code} from {host}") from None
        except httpx.HTTPError as exc:
            raise SinkError(f"{type(exc).__name__} reaching {host}") from None

    @retry(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.5, max=4), reraise=True)
    def _post(self, body: Any) -> None:
        response = self.client.post(self.url, json=body)
        response.raise_for_status()


def build_sinks(configs: Mapping[str, Mapping[str, Any]], environ: Mapping[str, str]) -> list[Any]:
    """The log sink and every ``[alerts.sinks.NAME]``; a bad table is a ValueError naming it."""
    sinks: list[Any] = [LogSink()]
    for name, config in configs.items():
        unknown = sorted(set(config) - {"type", "url", "token_env"})
        if unknown:
            raise ValueError(f"alert sink {name}: unknown key {unknown[0]!r} (known: token_env, type, url)")
        url = config.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"alert sink {name}: url must be an http(s) URL")
        token_env = config.get("token_env")
        token = environ.get(token_env) if isinstance(token_env, str) else None
        if token_env is not None and not token:
            raise ValueError(f"alert sink {name}: environment variable {token_env} is not set")
        sinks.append(HttpSink(name, str(config.get("type")), url, token=token))
    return sinks


def _iso(moment: Any) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None
