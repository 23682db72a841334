"""A generic JSON-over-HTTP provider, plus the HTTP helpers the Twilio adapter shares.

Every failure is translated into the port's errors here, at the boundary, with a short reason
that never carries the recipient or the body: reasons end up in logs and in the event store. A
refusal's reason adds the provider's own words where it gave some (``answer_detail``), with the
recipient and any number masked, and withheld when they quote the body.

While tracing is on, each request carries the provider call's span as W3C ``traceparent``.
"""

from __future__ import annotations

import email.utils
import math
import socket
import sys
import time
from collections.abc import Mapping
from datetime import UTC
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from domain.backoff import is_transient_status
from domain.failures import provider_detail
from domain.ports import (
    DeliveryError,
    OutboundMessage,
    PermanentDeliveryError,
    ProviderReceipt,
    ProviderUnhealthyError,
    TransientDeliveryError,
)

#: No cap of its own on connections: ``SMEG_PROVIDER_CONCURRENCY`` bounds a process's calls in
#: flight (a second, lower cap here would turn a raised setting into pool timeouts); idle
#: connections beyond 64 are closed.
LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=64)
#: A TCP health probe never waits longer than this, whatever the send timeout.
MAX_PROBE_TIMEOUT = 5.0
#: OpenTelemetry's W3C trace-context propagator: looked up among loaded modules, never imported here.
TRACECONTEXT_MODULE = "opentelemetry.trace.propagation.tracecontext"


class Clients:
    """A provider's HTTP clients: a pooled async one for sends, a short-lived one per health probe.

    The async client is made on the first send, on the loop every send of the process runs on
    (an ``httpx.AsyncClient`` keeps to the loop it was first used on); a 3xx is an answer, not
    followed.
    """

    def __init__(
        self,
        timeout: float,
        *,
        auth: tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.options: dict[str, Any] = {
            "timeout": httpx.Timeout(timeout),
            "follow_redirects": False,
            "auth": auth,
            "headers": headers,
        }
        self._sending: httpx.AsyncClient | None = None

    @property
    def sending(self) -> httpx.AsyncClient:
        if self._sending is None:
            self._sending = httpx.AsyncClient(limits=LIMITS, **self.options)
        return self._sending

    def get(self, url: str) -> httpx.Response:
        """One blocking GET (health probes: at start-up and ``smeg check``, off the loop)."""
        with httpx.Client(**self.options) as client:
            return client.get(url)

    async def aclose(self) -> None:
        client, self._sending = self._sending, None
        if client is not None:
            await client.aclose()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` value (delta-seconds or an HTTP-date); None if unusable.

    A provider that sends garbage gets no say in the backoff rather than breaking delivery.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def header_safe(value: str) -> str:
    """The value as a legal header value: printable ASCII passes, anything else is %-encoded.

    A correlation id with a newline or non-ASCII text must not turn every attempt into a local
    protocol error that would be retried forever.
    """
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe="")


def with_trace_context(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` plus the current span's ``traceparent`` (and ``tracestate``), if there is one.

    The runtime's tracing makes the provider call's span current around ``send``. This adapter may
    not import the runtime (layers) and must not import OpenTelemetry while tracing is off, so it
    looks the propagator up: if OpenTelemetry was never loaded, no span can be current.
    """
    tracecontext = sys.modules.get(TRACECONTEXT_MODULE)
    if tracecontext is not None:
        tracecontext.TraceContextTextMapPropagator().inject(headers)
    return headers


def transport_failure(exc: httpx.RequestError, timeout: float) -> TransientDeliveryError:
    """No HTTP answer: always worth retrying (the idempotency key makes a retry safe)."""
    kind = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return TransientDeliveryError(f"timeout after {timeout}s ({kind})")
    if isinstance(exc, httpx.ConnectError):
        return TransientDeliveryError(f"connect error: {kind}")
    return TransientDeliveryError(f"transport error: {kind}")


def status_failure(reason: str, response: httpx.Response) -> DeliveryError:
    """Classify a non-2xx answer by its status code alone (see ``is_transient_status``)."""
    code = response.status_code
    if is_transient_status(code):
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return TransientDeliveryError(reason, status_code=code, retry_after=retry_after)
    return PermanentDeliveryError(reason, status_code=code)


#: Where a JSON error answer usually says why (``{"error": {"message": …}}`` too).
DETAIL_KEYS = ("message", "error_message", "error_description", "detail", "error", "title", "description")


def answer_detail(response: httpx.Response, message: OutboundMessage) -> str | None:
    """What the provider said about a refusal (``domain.failures.provider_detail``: masked,
    never the body), from its JSON answer's usual keys or a plain-text answer's first line."""
    text: str | None = None
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in DETAIL_KEYS:
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("detail")
            if isinstance(value, str) and value.strip():
                text = value
                break
    elif response.headers.get("content-type", "").startswith("text/plain"):
        text = response.text[:1000].split("\n", 1)[0]
    return provider_detail(text, to=message.to, body=message.body)


def json_field(response: httpx.Response, key: str) -> str | None:
    """A non-empty string or integer field of a JSON object answer, as text; else None."""
    try:
        data = response.json()
    except ValueError:
        return None
    value = data.get(key) if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return text or None


class HttpProvider:
    """POSTs each message as JSON to one URL; the receipt is the ``id`` of the JSON answer.

    A 2xx answer without a usable ``id`` raises PermanentDeliveryError: the provider took the
    request, so a retry could deliver twice if it ignores the idempotency key, and an empty
    receipt would hide the problem. The message fails loudly (dead-letter queue) instead.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        timeout: float = 5.0,
        health_url: str | None = None,
        token: str | None = None,
    ) -> None:
        """Open the provider's connection pool.

        Args:
            name: the provider's configured name.
            url: where messages are POSTed (http or https).
            timeout: seconds for each of connect, write, read and pool wait.
            health_url: GET target of ``check_health``; without it the probe is a TCP connect.
            token: bearer token sent on every request, if any.
        """
        self.name = name
        self.url = url
        self.timeout = timeout
        self.health_url = health_url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._clients = Clients(timeout, headers=headers)

    async def send(self, message: OutboundMessage) -> ProviderReceipt:
        """Deliver one message; the same ``Idempotency-Key`` is sent on every attempt.

        Raises:
            TransientDeliveryError: 408, 425, 429, 5xx, timeouts and connection failures.
            PermanentDeliveryError: any other non-2xx answer, or a 2xx without an id.
        """
        payload = {
            "message_id": message.message_id,
            "channel": message.channel,
            "to": message.to,
            "from": message.sender,
            "body": message.body,
        }
        headers = with_trace_context(
            {
                "Idempotency-Key": header_safe(message.message_id),
                "X-Correlation-ID": header_safe(message.correlation_id),
            }
        )
        try:
            response = await self._clients.sending.post(self.url, json=payload, headers=headers)
        except httpx.RequestError as exc:
            raise transport_failure(exc, self.timeout) from exc
        if not response.is_success:
            detail = answer_detail(response, message)
            reason = f"http {response.status_code}" + (f": {detail}" if detail else "")
            raise status_failure(reason, response)
        receipt = json_field(response, "id")
        if receipt is None:
            raise PermanentDeliveryError("provider answered 2xx without id", status_code=response.status_code)
        return ProviderReceipt(receipt)

    def check_health(self) -> None:
        """GET ``health_url`` (2xx is healthy), else TCP-connect to the send URL's host and port.

        Raises:
            ProviderUnhealthyError: the probe failed; the message says how, in one line.
        """
        if self.health_url:
            try:
                response = self._clients.get(self.health_url)
            except httpx.RequestError as exc:
                reason = transport_failure(exc, self.timeout).reason
                raise ProviderUnhealthyError(f"health check failed: {reason}") from exc
            if not response.is_success:
                raise ProviderUnhealthyError(f"health check answered http {response.status_code}")
            return
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=min(self.timeout, MAX_PROBE_TIMEOUT)):
                pass
        except OSError as exc:
            raise ProviderUnhealthyError(
                f"tcp connect to {host}:{port} failed: {type(exc).__name__}"
            ) from exc

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._clients.aclose()
