"""The Twilio Messages API (``POST /2010-04-01/Accounts/{sid}/Messages.json``).

Twilio's JSON error ``code`` is a better signal than the HTTP status, so it is classified first;
the status decides only when the code is unknown. Reasons are ``twilio <code>`` or
``twilio http <status>``: never Twilio's ``message``, which may quote the recipient.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx

from adapters.providers.http import (
    Clients,
    answer_detail,
    header_safe,
    json_field,
    parse_retry_after,
    transport_failure,
)
from domain.backoff import is_transient_status
from domain.ports import (
    DeliveryError,
    OutboundMessage,
    PermanentDeliveryError,
    ProviderReceipt,
    ProviderUnhealthyError,
    TransientDeliveryError,
)

DEFAULT_BASE_URL = "https://api.twilio.com"

#: Retrying cannot help: bad To/From, region not enabled, unsubscribed, not a mobile, bad auth.
PERMANENT_CODES = frozenset({20003, 21211, 21212, 21408, 21606, 21610, 21614})
#: Twilio is pushing back (too many requests, queue overflow): come back later.
TRANSIENT_CODES = frozenset({20429, 30001})


class TwilioProvider:
    """Sends SMS through Twilio with basic auth and Twilio's own idempotency header.

    The sender is the message's own, else the configured ``from``; a configured Messaging
    Service is always sent too (Twilio accepts it with or without ``From``).
    """

    def __init__(
        self,
        name: str,
        account_sid: str,
        auth_token: str,
        *,
        sender: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 5.0,
        messaging_service_sid: str | None = None,
    ) -> None:
        """Open the provider's connection pool.

        Args:
            name: the provider's configured name.
            account_sid: the Twilio account (``AC…``), part of every URL.
            auth_token: the account's auth token (from the environment, never the config).
            sender: default ``From`` when a message names none.
            base_url: Twilio's API root; a local fake in tests.
            timeout: seconds for each of connect, write, read and pool wait.
            messaging_service_sid: ``MG…`` Messaging Service to send through, if any.
        """
        self.name = name
        self.sender = sender
        self.timeout = timeout
        self.messaging_service_sid = messaging_service_sid
        account = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{quote(account_sid, safe='')}"
        self._messages_url = f"{account}/Messages.json"
        self._account_url = f"{account}.json"
        self._clients = Clients(timeout, auth=(account_sid, auth_token))

    async def send(self, message: OutboundMessage) -> ProviderReceipt:
        """Create one Twilio Message; ``message_id`` is the idempotency token on every attempt.

        Raises:
            TransientDeliveryError: 20429, 30001, HTTP 408/425/429/5xx, timeouts, connect errors.
            PermanentDeliveryError: known permanent codes, any other 4xx, no sender at all, or a
                2xx without a ``sid`` (Twilio took it: retrying might send twice).
        """
        form = {"To": message.to, "Body": message.body}
        sender = message.sender or self.sender
        if sender:
            form["From"] = sender
        if self.messaging_service_sid:
            form["MessagingServiceSid"] = self.messaging_service_sid
        if not sender and not self.messaging_service_sid:
            raise PermanentDeliveryError("twilio: no sender (set from or messaging_service_sid)")
        headers = {
            "I-Twilio-Idempotency-Token": header_safe(message.message_id),
            "X-Correlation-ID": header_safe(message.correlation_id),
        }
        try:
            response = await self._clients.sending.post(self._messages_url, data=form, headers=headers)
        except httpx.RequestError as exc:
            raise transport_failure(exc, self.timeout) from exc
        if not response.is_success:
            raise twilio_failure(response, message)
        sid = json_field(response, "sid")
        if sid is None:
            raise PermanentDeliveryError("twilio answered 2xx without sid", status_code=response.status_code)
        return ProviderReceipt(sid)

    def check_health(self) -> None:
        """Fetch the account resource: proves reachability and valid credentials at once.

        Raises:
            ProviderUnhealthyError: unreachable, or any non-2xx answer (e.g. 401 for a bad token).
        """
        try:
            response = self._clients.get(self._account_url)
        except httpx.RequestError as exc:
            reason = transport_failure(exc, self.timeout).reason
            raise ProviderUnhealthyError(f"twilio health check failed: {reason}") from exc
        if not response.is_success:
            raise ProviderUnhealthyError(f"twilio health check answered http {response.status_code}")

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._clients.aclose()


def twilio_failure(response: httpx.Response, message: OutboundMessage | None = None) -> DeliveryError:
    """Classify a non-2xx Twilio answer: known codes first, then the HTTP status; the reason adds
    Twilio's ``message`` (``answer_detail``: masked, never the body)."""
    status = response.status_code
    raw = json_field(response, "code")
    code = int(raw) if raw is not None and raw.isascii() and raw.isdigit() and len(raw) <= 9 else None
    reason = f"twilio {code}" if code is not None else f"twilio http {status}"
    detail = answer_detail(response, message) if message is not None else None
    reason += f": {detail}" if detail else ""
    if code in PERMANENT_CODES:
        return PermanentDeliveryError(reason, status_code=status)
    if code in TRANSIENT_CODES or is_transient_status(status):
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return TransientDeliveryError(reason, status_code=status, retry_after=retry_after)
    return PermanentDeliveryError(reason, status_code=status)
