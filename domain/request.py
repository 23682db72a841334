"""The send request as it arrives from a client, and the edge rules it must pass.

Every byte a client publishes may be crafted, so the rules are written for what each field must
survive downstream: an AMQP short string (255 bytes) for ``correlation_id``, PostgreSQL text (no
NUL) for every string, one log line for every reason. Limits are in UTF-8 bytes, except the
body's, which is in characters because that is how providers count a message.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from domain.errors import InvalidRequestError

MESSAGE_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
E164_RE = re.compile(r"\+[1-9][0-9]{6,14}")
CHANNELS = ("sms", "im")
#: The body, in characters (ten concatenated SMS segments).
MAX_BODY = 1600
MAX_IM_ADDRESS = 256
MAX_METADATA_BYTES = 4096
MAX_METADATA_KEY_BYTES = 64
MAX_CORRELATION_ID = 128
MAX_PROVIDER = 64
#: A request is refused unread beyond this size: the largest valid one is far smaller.
MAX_REQUEST_BYTES = 64 * 1024
#: A valid request nests two levels (the object and its metadata); deeper is refused unread.
MAX_DEPTH = 16
#: Reasons name the offending value, cut to this many characters.
MAX_QUOTED = 64
KNOWN_FIELDS = frozenset(
    {"message_id", "channel", "to", "from", "body", "correlation_id", "provider", "metadata"}
)
#: C0 controls, DEL and C1 controls: never in ids, addresses or metadata keys.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: The same, but tab, newline and carriage return are text: allowed in the body and metadata values.
CONTROL_EXCEPT_LINES_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_STRING_RE = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET_RE = re.compile(rb"[\[\]{}]")


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A validated request to deliver one message."""

    message_id: str
    channel: str
    to: str
    body: str
    correlation_id: str
    sender: str | None = None
    provider: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """The request as a client would have sent it (used for the failed queue)."""
        data: dict[str, Any] = {
            "message_id": self.message_id,
            "channel": self.channel,
            "to": self.to,
            "body": self.body,
            "correlation_id": self.correlation_id,
        }
        if self.sender is not None:
            data["from"] = self.sender
        if self.provider is not None:
            data["provider"] = self.provider
        if self.metadata:
            data["metadata"] = self.metadata
        return json.dumps(data, ensure_ascii=False).encode()


def parse_send_request(
    raw: bytes, *, correlation_id: object = None, strict_loads: Callable[[bytes], Any] | None = None
) -> SendRequest:
    """Decode and validate a request; raise InvalidRequestError naming the first broken rule.

    Args:
        raw: the message body exactly as received.
        correlation_id: the transport's correlation id, used when the body carries none (it is
            checked by the same rules: a crafted AMQP property is client input too).
        strict_loads: a faster decoder to try first (the RabbitMQ consumer passes orjson's, 5x the
            standard library's speed, on the thread every request passes through). It must refuse
            what is not strict UTF-8 JSON, lone surrogates included; whatever it refuses is decoded
            again by the standard library, whose verdict and error messages are the ones that count.
    """
    check_bounds(raw)
    data = _strictly_decoded(raw, strict_loads)
    if data is None:
        data = _decoded(raw)
    if not isinstance(data, dict):
        raise InvalidRequestError("body is not a JSON object")
    unknown = sorted(set(data) - KNOWN_FIELDS)
    if unknown:
        raise InvalidRequestError(f"unknown field: {quoted(unknown[0])}")
    channel = _channel(data.get("channel"))
    message_id = _message_id(data.get("message_id"))
    return SendRequest(
        message_id=message_id,
        channel=channel,
        to=_recipient(channel, data.get("to")),
        body=_body(data.get("body")),
        correlation_id=_correlation_id(data.get("correlation_id"), correlation_id),
        sender=_optional_str("from", data.get("from"), MAX_IM_ADDRESS),
        provider=_optional_str("provider", data.get("provider"), MAX_PROVIDER),
        metadata=_metadata(data.get("metadata")),
    )


def check_bounds(raw: bytes) -> None:
    """Refuse a body too big or nested too deep before any decoder sees (and recurses into) it.

    Counting brackets is done in C and settles almost every request; only a body with more than
    ``MAX_DEPTH`` brackets in all is scanned, with its strings taken out first.
    """
    if len(raw) > MAX_REQUEST_BYTES:
        raise InvalidRequestError(f"body is larger than {MAX_REQUEST_BYTES} bytes")
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return
    depth = 0
    for bracket in _BRACKET_RE.findall(_STRING_RE.sub(b"", raw)):
        depth += 1 if bracket in (b"[", b"{") else -1
        if depth > MAX_DEPTH:
            raise InvalidRequestError(f"body nests deeper than {MAX_DEPTH} levels")


#: The longest reason a person gives for a change (retry, archive, flag, provider switch).
MAX_REASON = 200


def one_line_text(value: object, limit: int = MAX_REASON) -> str:
    """What a person types to be recorded (a reason, a name): 1-``limit`` characters of one line,
    no control characters, valid UTF-8; stripped. ValueError says what is wrong, naming no value."""
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > limit:
        raise ValueError(f"must be 1-{limit} characters")
    text = value.strip()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (undecodable bytes in argv)
        text = "\x00"
    if CONTROL_RE.search(text):
        raise ValueError("must be one line of text, without control characters")
    return value.strip()


def quoted(value: str, limit: int = MAX_QUOTED) -> str:
    """A client's value fit for a one-line reason: control characters escaped, cut with ``…``."""
    text = value if len(value) <= limit else value[:limit] + "…"
    return CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _strictly_decoded(raw: bytes, strict_loads: Callable[[bytes], Any] | None) -> Any:
    if strict_loads is None:
        return None
    try:
        return strict_loads(raw)
    except ValueError:  # orjson.JSONDecodeError is one
        return None


def _bounded_int(digits: str) -> int | float:
    """Python refuses to read integers of more than 4,300 digits; no field takes a number anyway."""
    return int(digits) if len(digits) <= 64 else float("inf")


def _decoded(raw: bytes) -> Any:
    try:
        data = json.loads(raw.decode("utf-8"), parse_int=_bounded_int)
    except UnicodeDecodeError:
        raise InvalidRequestError("body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"body is not JSON: {exc.msg}") from None
    except RecursionError:
        raise InvalidRequestError(f"body nests deeper than {MAX_DEPTH} levels") from None
    # A lone surrogate can only come from a \u escape (the bytes were valid UTF-8), so the costly
    # re-encoding runs only for bodies that hold one.
    if b"\\u" in raw:
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError("body contains an invalid unicode escape (lone surrogate)") from None
    return data


def new_id() -> str:
    """A fresh random id (128 bits as 32 hex digits, as ``uuid4().hex`` looks, at a fifth of its
    cost: one is made per request that comes without a correlation id)."""
    return os.urandom(16).hex()


def _message_id(value: object) -> str:
    if value is None:
        return new_id()
    if not isinstance(value, str) or not MESSAGE_ID_RE.fullmatch(value):
        raise InvalidRequestError("message_id must be 1-128 chars of [A-Za-z0-9._:-]")
    return value


def _channel(value: object) -> str:
    if value not in CHANNELS:
        raise InvalidRequestError("channel must be 'sms' or 'im'")
    return str(value)


def _recipient(channel: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError("to must be a string")
    if channel == "sms" and not E164_RE.fullmatch(value):
        raise InvalidRequestError("to must be an E.164 number for sms")
    if channel == "im":
        return _text("to", value, MAX_IM_ADDRESS, f"to must be 1-{MAX_IM_ADDRESS} bytes for im")
    return value


def _body(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_BODY:
        raise InvalidRequestError(f"body must be a string of 1-{MAX_BODY} chars")
    if not value.isprintable() and CONTROL_EXCEPT_LINES_RE.search(value):
        raise InvalidRequestError("body must not contain control characters other than tab and newlines")
    return value


def _correlation_id(value: object, fallback: object) -> str:
    if value is None:
        value = fallback or new_id()
    return _text(
        "correlation_id",
        value,
        MAX_CORRELATION_ID,
        f"correlation_id must be a string of 1-{MAX_CORRELATION_ID} bytes",
    )


def _optional_str(name: str, value: object, limit: int) -> str | None:
    if value is None:
        return None
    return _text(name, value, limit, f"{name} must be a string of 1-{limit} bytes")


def _text(name: str, value: object, limit: int, rule: str) -> str:
    """A one-line string of 1-``limit`` UTF-8 bytes: what travels in AMQP headers and SQL text."""
    if not isinstance(value, str) or not value or len(value) > limit or _utf8_size(value) > limit:
        raise InvalidRequestError(rule)
    if not value.isprintable() and CONTROL_RE.search(value):  # isprintable: C speed, mostly True
        raise InvalidRequestError(f"{name} must not contain control characters")
    return value


def _utf8_size(value: str) -> int:
    if value.isascii():
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: never storable, never sendable
        return MAX_REQUEST_BYTES + 1


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidRequestError("metadata must be an object of strings")
    if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_METADATA_BYTES:
        raise InvalidRequestError(f"metadata must be at most {MAX_METADATA_BYTES} bytes")
    for key, item in value.items():
        if not key or _utf8_size(key) > MAX_METADATA_KEY_BYTES or CONTROL_RE.search(key):
            raise InvalidRequestError(
                f"metadata keys must be 1-{MAX_METADATA_KEY_BYTES} bytes without control characters"
            )
        if CONTROL_EXCEPT_LINES_RE.search(item):
            raise InvalidRequestError(
                "metadata values must not contain control characters other than tab and newlines"
            )
    return dict(value)


def mask_address(value: str) -> str:
    """Mask a phone number or IM handle for logs and human output: ``*********0123``.

    At most the last four characters are shown, and at least four are hidden, so a short
    address is never given away (``+1234567`` becomes ``****4567``; ``abcd`` becomes ``****``).
    """
    shown = min(4, max(0, len(value) - 4))
    return "*" * (len(value) - shown) + (value[-shown:] if shown else "")
