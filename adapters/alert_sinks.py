"""Where alerts are told: the log (always), a webhook (JSON, with a Slack-compatible ``text``),
Prometheus Alertmanager's v2 API, or email over SMTP. Each remote sink tries 3 times with a short
backoff, then raises (the evaluator records the failure); nothing here is on the delivery path.

The webhook's body (contract): ``{"status": "firing" | "resolved", "rule", "key", "severity",
"summary", "labels", "value", "raised_at", "resolved_at", "alert_id", "text"}``.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from typing import Any

import httpx
import structlog
from tenacity import Retrying, retry, retry_if_exception, stop_after_attempt, wait_exponential

from domain.alert import FIRING, RESOLVED, Alert

log = structlog.get_logger(__name__)

#: Seconds for each HTTP call of a sink, and each SMTP socket operation unless ``timeout`` is set.
TIMEOUT = 5.0
#: The longest SMTP ``timeout`` accepted: the evaluator waits for its sinks (3 tries each).
MAX_SMTP_TIMEOUT = 60.0
#: The port on which SMTP speaks TLS from the first byte (RFC 8314); any other is plain or STARTTLS.
SMTPS_PORT = 465
SINK_TYPES = ("webhook", "alertmanager", "smtp")
HTTP_KEYS = ("token_env", "type", "url")
SMTP_KEYS = ("from", "host", "password_env", "port", "starttls", "timeout", "to", "type", "username")


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


class SmtpSink:
    """Mails each change, one message per firing or resolve. TLS (port 465, or ``starttls``)
    verifies the server's certificate; the password is only ever the environment's."""

    #: A mail is not forgotten: a firing alert is not re-sent.
    repeats = False

    def __init__(
        self,
        name: str,
        host: str,
        *,
        sender: str,
        recipients: Sequence[str],
        port: int = 25,
        starttls: bool = False,
        credentials: tuple[str, str] | None = None,
        timeout: float = TIMEOUT,
        backoff: float = 0.5,
    ) -> None:
        self.name, self.host, self.port, self.starttls = name, host, port, starttls
        self.sender, self.recipients = sender, list(recipients)
        self.credentials, self.timeout = credentials, timeout
        self.retrying = Retrying(
            stop=stop_after_attempt(3),
            wait=wait_exponential(multiplier=backoff, max=4),
            retry=retry_if_exception(_transient),
            reraise=True,
        )

    def notify(self, alert: Alert) -> None:
        """Raises SinkError, whose text names the host only: never the password nor a recipient."""
        try:
            refused = self.retrying(self._send, self.message(alert))
        except smtplib.SMTPException as exc:
            raise SinkError(f"{type(exc).__name__} from {self.host}") from None
        except OSError as exc:
            raise SinkError(f"{type(exc).__name__} reaching {self.host}:{self.port}") from None
        if refused:  # not retried: the others have the mail already
            raise SinkError(f"{len(refused)} of {len(self.recipients)} recipients refused by {self.host}")

    def message(self, alert: Alert) -> EmailMessage:
        """The mail: the webhook's fields as ``key: value`` lines, the change in the subject."""
        body = webhook_body(alert)
        message = EmailMessage()
        # One line whatever a key holds (a header may not contain a line break).
        message["Subject"] = " ".join(f"[{body['status'].upper()}] smeg {alert.rule} {alert.key}".split())
        message["From"], message["To"] = self.sender, ", ".join(self.recipients)
        message["Date"] = formatdate(usegmt=True)
        # From the sender's domain: make_msgid's default asks DNS for this host's name.
        message["Message-ID"] = make_msgid(domain=_mailbox(self.sender).rpartition("@")[2])
        message.set_content("".join(f"{key}: {_plain(value)}\n" for key, value in body.items()))
        return message

    def _send(self, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
        """One SMTP conversation; the recipients refused (all of them refused: an exception)."""
        connection: smtplib.SMTP
        if self.port == SMTPS_PORT:
            connection = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with connection as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.credentials is not None:
                smtp.login(*self.credentials)
            envelope_to = [_mailbox(r) for r in self.recipients]
            return smtp.send_message(message, _mailbox(self.sender), envelope_to)


def _transient(exc: BaseException) -> bool:
    """Worth another try: no connection, a dropped one, or a 4xx answer. Never a refused login nor
    a 5xx: trying a wrong password three times per alert can lock the account."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code < 500
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code < 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException)


def build_sinks(configs: Mapping[str, Mapping[str, Any]], environ: Mapping[str, str]) -> list[Any]:
    """The log sink and every ``[alerts.sinks.NAME]``; a bad table is a ValueError naming it."""
    sinks: list[Any] = [LogSink()]
    for name, config in configs.items():
        if not isinstance(config, Mapping):
            raise ValueError(f"alert sink {name}: must be a table")
        kind = config.get("type")
        _known(name, config, SMTP_KEYS if kind == "smtp" else HTTP_KEYS)
        if kind not in SINK_TYPES:
            raise ValueError(f"alert sink {name}: type must be webhook, alertmanager or smtp")
        sinks.append(
            _smtp_sink(name, config, environ) if kind == "smtp" else _http_sink(name, config, environ)
        )
    return sinks


def _http_sink(name: str, config: Mapping[str, Any], environ: Mapping[str, str]) -> HttpSink:
    url = config.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"alert sink {name}: url must be an http(s) URL")
    token = _secret(name, "token_env", config.get("token_env"), environ)
    return HttpSink(name, str(config["type"]), url, token=token)


def _smtp_sink(name: str, config: Mapping[str, Any], environ: Mapping[str, str]) -> SmtpSink:
    """Every field checked now, so a typo stops the start rather than the first alert's mail."""
    port, starttls = config.get("port", 25), config.get("starttls", False)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"alert sink {name}: port must be a whole number from 1 to 65535")
    if not isinstance(starttls, bool):
        raise ValueError(f"alert sink {name}: starttls must be true or false")
    if starttls and port == SMTPS_PORT:
        raise ValueError(
            f"alert sink {name}: starttls is for a plain port; {SMTPS_PORT} is TLS from the start"
        )
    return SmtpSink(
        name,
        _host(name, config.get("host")),
        sender=_address(name, "from", config.get("from")),
        recipients=_recipients(name, config.get("to")),
        port=port,
        starttls=starttls,
        credentials=_credentials(name, config, environ),
        timeout=_timeout(name, config.get("timeout", TIMEOUT)),
    )


def _known(name: str, config: Mapping[str, Any], keys: Sequence[str]) -> None:
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise ValueError(f"alert sink {name}: unknown key {unknown[0]!r} (known: {', '.join(keys)})")


def _secret(name: str, key: str, variable: Any, environ: Mapping[str, str]) -> str | None:
    """The value of the environment variable named by ``key`` (None: no such key); a secret is
    never read from the TOML file, which is shown and copied about."""
    if variable is None:
        return None
    if not isinstance(variable, str) or not variable:
        raise ValueError(f"alert sink {name}: {key} must name an environment variable")
    value = environ.get(variable)
    if not value:
        raise ValueError(f"alert sink {name}: environment variable {variable} is not set")
    return value


def _host(name: str, host: Any) -> str:
    if host is None:
        raise ValueError(f"alert sink {name}: host is required")
    # One colon is a port in the wrong place (several: an IPv6 address).
    if not isinstance(host, str) or not re.fullmatch(r"[\w.:-]+", host) or host.count(":") == 1:
        raise ValueError(f"alert sink {name}: host must be a host name or IP address (the port goes in port)")
    return host


def _address(name: str, key: str, value: Any) -> str:
    """One address, bare or with a display name (``Ops <ops@example.com>``)."""
    if value is None:
        raise ValueError(f"alert sink {name}: {key} is required")
    one = (
        isinstance(value, str) and "\r" not in value and "\n" not in value and len(getaddresses([value])) == 1
    )
    if not one or not re.fullmatch(r"[^@\s]+@[^@\s]+", _mailbox(value)):
        raise ValueError(f"alert sink {name}: {key} must be an email address")
    return str(value)


def _recipients(name: str, to: Any) -> list[str]:
    """``to``: one address or a list of them."""
    if to is None:
        raise ValueError(f"alert sink {name}: to is required")
    addresses = [to] if isinstance(to, str) else to
    if not isinstance(addresses, list) or not addresses:
        raise ValueError(f"alert sink {name}: to must be an email address or a list of them")
    return [_address(name, "to", address) for address in addresses]


def _credentials(name: str, config: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[str, str] | None:
    """``username`` and the password from ``password_env``: both or neither."""
    username, variable = config.get("username"), config.get("password_env")
    if username is None and variable is None:
        return None
    if not isinstance(username, str) or not username:
        raise ValueError(f"alert sink {name}: password_env needs a username")
    password = _secret(name, "password_env", variable, environ)
    if password is None:
        raise ValueError(f"alert sink {name}: username needs password_env (the password is read from there)")
    if not (username + password).isascii():  # smtplib's AUTH sends ASCII only
        raise ValueError(f"alert sink {name}: username and password must be ASCII")
    return username, password


def _timeout(name: str, timeout: Any) -> float:
    number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if not number or not 0 < timeout <= MAX_SMTP_TIMEOUT:  # NaN fails this too
        raise ValueError(
            f"alert sink {name}: timeout must be more than 0 and at most {MAX_SMTP_TIMEOUT:g} seconds"
        )
    return float(timeout)


def _mailbox(address: str) -> str:
    """The bare address of ``Name <box@domain>`` (the envelope's)."""
    return getaddresses([address])[0][1]


def _plain(value: Any) -> str:
    """A webhook field as text: labels as ``k=v, …``, nothing as ``-``."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


def _iso(moment: Any) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None
