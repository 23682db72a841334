"""Fuzzing smeg's intake through the real broker: payload generators, an oracle, and a harness.

Shared by ``tests/e2e/test_fuzz_intake.py`` (bounded, in CI) and ``scripts/fuzz_intake.py``
(longer, prints figures), so that there is one copy of each.

* The generators are Hypothesis strategies: a batch is a list of payloads (body bytes and AMQP
  properties) of many kinds: valid requests at their byte and character limits, one broken field,
  broken or deep or wide JSON, huge numbers, lone surrogates, duplicate keys, arbitrary bytes, and
  odd properties and header tables (written by our own encoder: pika cannot write doubles).
* The oracle (``judge``) writes the intake contract out again instead of calling
  ``parse_send_request``, so a bug in the parser cannot hide in the test. It answers VALID, INVALID,
  or UNSURE where the contract does not settle the case (a character that may or may not count as
  a control character, a duplicate key that decides the outcome, ...); UNSURE payloads are not
  published, so every published payload has one clear expected fate.
* The harness (``IntakeFuzzer``) runs one ``smeg run`` on its own queue prefix and SQLite store
  with instant simulated providers, publishes each batch with publisher confirms, and waits until
  every payload has settled: each invalid one on ``{prefix}.rejected``, byte-identical, with an
  ``x-smeg-error`` of at most 512 UTF-8 bytes; each valid one Delivered in the store with the
  content that was sent. If smeg dies, the batch fails and smeg is started again (its queue
  purged), so Hypothesis can keep shrinking a failing batch against one live process.
"""

from __future__ import annotations

import enum
import functools
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import unicodedata
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import pika
import pika.data
import pika.exceptions
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")

# --- the contract, written out (README, docs/architecture.md "Hostile input, poison and crashes"
# and the intake brief; not imported from domain) ---------------------------------------------

#: A body over this many bytes is refused unread.
MAX_PAYLOAD_BYTES = 64 * 1024
#: The body is counted in characters (as providers count a message); every other limit is in
#: UTF-8 bytes.
MAX_BODY_CHARS = 1600
MAX_ADDRESS_BYTES = 256  # "to" of an im request, and "from"
MAX_CORRELATION_BYTES = 128
MAX_PROVIDER_BYTES = 64
MAX_METADATA_KEY_BYTES = 64
MAX_METADATA_BYTES = 4096  # the metadata object as JSON text
MAX_MESSAGE_ID = 128  # [A-Za-z0-9._:-]: ASCII, so characters are bytes
MAX_ERROR_BYTES = 512  # the x-smeg-error header of a rejected payload
MAX_COPIED_HEADER_BYTES = 16 * 1024  # the client's headers copied onto a rejected payload
KNOWN_FIELDS = frozenset(
    {"message_id", "channel", "to", "from", "body", "correlation_id", "provider", "metadata"}
)
#: Providers configured in the smeg under test (all simulated, instant). The last two are
#: configured but longer than the 64-byte limit, so a request naming them is invalid; "€"*22 is
#: 22 characters but 66 bytes: a check in characters would let it through.
USABLE_PROVIDERS = ("sim", "p" * 64, "€" * 21 + "x")
OVERLONG_PROVIDERS = ("q" * 65, "€" * 22)
PROVIDERS = USABLE_PROVIDERS + OVERLONG_PROVIDERS
FRAME_MAX = 131072  # RabbitMQ's and pika's default; a content header frame must fit in one frame
BOM = b"\xef\xbb\xbf"

_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_E164_RE = re.compile(r"\+[1-9][0-9]{6,14}")
#: Not control characters (Cc), but an implementation might refuse them too: UNSURE.
_DOUBTFUL_CATEGORIES = frozenset({"Cf", "Co", "Cn", "Zl", "Zp"})


# --- JSON as written: ordered pairs (duplicates allowed) and verbatim text ----------------------


@dataclass(frozen=True)
class Raw:
    """JSON text written as is: huge numbers, NaN, deep nests, broken syntax."""

    text: str


@dataclass(frozen=True)
class Obj:
    """A JSON object as written: its pairs in order, duplicate keys allowed."""

    pairs: tuple[tuple[str, Json], ...]


Json: TypeAlias = "bool | int | float | str | Raw | Obj | list[Json] | None"


@dataclass(frozen=True)
class Style:
    """How a document is written: escapes, separators, surrounding whitespace."""

    escapes: str = "raw"  # raw UTF-8, "ascii" (\\u escapes, pairs for astral chars) or "mixed"
    slash: bool = False  # write "/" as "\\/"
    item_sep: str = ", "
    key_sep: str = ": "
    lead: str = ""
    trail: str = ""


_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_NON_ASCII_RE = re.compile("[^\x00-\x7f]")


def _u_escape(char: str) -> str:
    code = ord(char)
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def _string(value: str, style: Style) -> str:
    if style.escapes == "ascii":
        text = json.dumps(value, ensure_ascii=True)
    else:
        text = json.dumps(value, ensure_ascii=False)  # a lone surrogate stays raw here ...
        if style.escapes == "mixed":
            text = _NON_ASCII_RE.sub(lambda m: _u_escape(m[0]) if ord(m[0]) % 2 else m[0], text)
        text = _SURROGATE_RE.sub(lambda m: _u_escape(m[0]), text)  # ... and is escaped here
    return text.replace("/", "\\/") if style.slash else text


def render(value: Json, style: Style = Style()) -> bytes:
    """The document's bytes (UTF-8; lone surrogates are always written as \\u escapes)."""
    return (style.lead + _render(value, style) + style.trail).encode("utf-8")


def _render(value: Json, style: Style) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _string(value, style)
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Obj):
        items = (f"{_string(k, style)}{style.key_sep}{_render(v, style)}" for k, v in value.pairs)
        return "{" + style.item_sep.join(items) + "}"
    return "[" + style.item_sep.join(_render(v, style) for v in value) + "]"


# --- AMQP properties and header tables, encoded by us ------------------------------------------


@dataclass(frozen=True)
class Field:
    """One AMQP field value with its type octet (pika writes neither doubles nor floats)."""

    code: bytes
    value: Any = None

    def __repr__(self) -> str:
        value = self.value
        if isinstance(value, bytes) and len(value) > 40:
            value = f"<{len(value)} bytes {value[:20]!r}…>"
        return f"{self.code.decode()}:{value!r}"


HeaderTable: TypeAlias = tuple[tuple[bytes, Field], ...]

_PACK = {
    b"b": ">b",
    b"B": ">B",
    b"s": ">h",
    b"u": ">H",
    b"I": ">i",
    b"i": ">I",
    b"l": ">q",
    b"L": ">q",
    b"f": ">f",
    b"d": ">d",
    b"T": ">Q",
}


def encode_field(item: Field) -> bytes:
    """One field value in AMQP 0-9-1 table encoding (RabbitMQ's type octets; not 'U', which it
    refuses with a connection error)."""
    code, value = item.code, item.value
    if code in (b"S", b"x"):
        return code + struct.pack(">I", len(value)) + bytes(value)
    if code == b"t":
        return code + struct.pack("B", 1 if value else 0)
    if code == b"D":
        return code + struct.pack(">Bi", *value)
    if code == b"V":
        return code
    if code == b"A":
        inner = b"".join(encode_field(v) for v in value)
        return code + struct.pack(">I", len(inner)) + inner
    if code == b"F":
        return code + encode_table(value)
    return code + struct.pack(_PACK[code], value)


def encode_table(entries: HeaderTable) -> bytes:
    """A field table; keys are raw bytes (not always UTF-8, up to 255), and may repeat."""
    inner = b"".join(struct.pack("B", len(k)) + k + encode_field(v) for k, v in entries)
    return struct.pack(">I", len(inner)) + inner


class _WireProperties(pika.BasicProperties):  # type: ignore[misc]
    """pika's properties with a header table we encoded ourselves spliced in."""

    def __init__(self, raw_headers: bytes | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.raw_headers = raw_headers

    def encode(self) -> list[bytes]:
        pieces: list[bytes] = super().encode()
        if self.raw_headers is None:
            return pieces
        flags = struct.unpack(">H", pieces[0])[0] | pika.BasicProperties.FLAG_HEADERS
        at = 1 + 2 * (self.content_type is not None) + 2 * (self.content_encoding is not None)
        return [struct.pack(">H", flags), *pieces[1:at], self.raw_headers, *pieces[at:]]


ShortStr: TypeAlias = "str | bytes | None"


_PIKA_PROPERTIES = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)


@dataclass(frozen=True)
class Properties:
    """The AMQP properties of one payload. ``fill_slack``: pad a header so that the content header
    frame is that many bytes under the frame size (smeg cannot add its error header to it)."""

    content_type: ShortStr = None
    content_encoding: ShortStr = None
    headers: HeaderTable | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: ShortStr = None
    reply_to: ShortStr = None
    expiration: str | None = None
    message_id: ShortStr = None
    timestamp: int | None = None
    type: ShortStr = None
    user_id: str | None = None
    app_id: ShortStr = None
    cluster_id: ShortStr = None
    fill_slack: int | None = None

    def _pika(self, headers: HeaderTable | None) -> _WireProperties:
        kwargs = {name: getattr(self, name) for name in _PIKA_PROPERTIES}
        return _WireProperties(None if headers is None else encode_table(headers), **kwargs)

    def table(self) -> HeaderTable | None:
        """The header table as sent, the filler included."""
        if self.fill_slack is None:
            return self.headers
        entries = (*(self.headers or ()), (b"fill", Field(b"S", b"")))
        size = 12 + len(b"".join(self._pika(entries).encode()))  # class, weight, body size + props
        room = FRAME_MAX - 8 - self.fill_slack - size
        return (*(self.headers or ()), (b"fill", Field(b"S", b"f" * max(0, room))))

    def wire(self) -> pika.BasicProperties:
        return self._pika(self.table())

    def decoded_headers(self) -> dict[Any, Any] | None:
        """The headers as pika hands them to smeg's consumer."""
        table = self.table()
        return None if table is None else pika.data.decode_table(encode_table(table), 0)[0]

    def copied_headers(self) -> dict[Any, Any] | None:
        """The client's headers the rejected copy must carry: each one pika can write again once
        it decoded it, when those fit the 16 KiB smeg copies at most; not the others (one over
        16 KiB on its own, or one pika cannot write: a float >= 2**63, ...). None when that is
        not settled (more than 16 KiB in all, or a name given twice)."""
        table = self.table() or ()
        if len({key for key, _v in table}) != len(table):
            return None
        kept: dict[Any, Any] = {}
        used = 0
        for key, item in table:
            decoded = pika.data.decode_table(encode_table(((key, item),)), 0)[0]
            try:
                size = pika.data.encode_table([], decoded)  # what smeg measures, as pika writes it
            except Exception:
                continue  # it does not encode again: it must be left out
            if size > MAX_COPIED_HEADER_BYTES:
                continue  # over the budget on its own
            kept.update(decoded)
            used += size
        return kept if used <= MAX_COPIED_HEADER_BYTES else None

    def summary(self) -> str:
        parts = []
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if value is not None and name != "headers":
                parts.append(f"{name}={_preview(value, 40)}")
        if self.headers is not None:
            parts.append(f"headers={_preview(repr(self.headers), 160)}")
        return ", ".join(parts) or "-"


def _preview(value: object, limit: int) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…(+{len(text) - limit})"


@dataclass(frozen=True)
class Payload:
    """One delivery to publish: its body exactly, its properties, and the generator that made it."""

    kind: str
    body: bytes
    properties: Properties = Properties()

    def __repr__(self) -> str:
        body = _preview(self.body, 160)
        return f"Payload({self.kind}, {len(self.body)} bytes {body}, {self.properties.summary()})"

    def _repr_pretty_(self, printer: Any, _cycle: bool) -> None:
        """Hypothesis prints a failing batch with this (its own printer would show every field)."""
        printer.text(repr(self))


# --- the oracle ---------------------------------------------------------------------------------


class Verdict(enum.Enum):
    VALID = "valid"
    INVALID = "invalid"
    UNSURE = "unsure"


@dataclass(frozen=True)
class Judgement:
    """What the contract says of one payload, and why; the request's fields when it is VALID."""

    verdict: Verdict
    reason: str
    message_id: str | None = None
    fields: dict[str, Any] | None = None


class _Number:
    """Any JSON number: never valid anywhere in a request, so its value does not matter."""


class _Pairs(tuple):  # type: ignore[type-arg]
    """A decoded JSON object with its pairs in order (duplicates kept)."""

    def as_dict(self, policy: str) -> dict[str, Any]:
        pairs = self if policy == "last" else reversed(self)
        return dict(pairs)


class _Decoding:
    """Hooks for json.loads that keep what a strict parser would refuse visible."""

    def __init__(self) -> None:
        self.duplicates = False
        self.constants = False

    def pairs(self, pairs: list[tuple[str, Any]]) -> _Pairs:
        if len({k for k, _v in pairs}) != len(pairs):
            self.duplicates = True
        return _Pairs(pairs)

    def number(self, _text: str) -> _Number:
        return _Number()  # huge integers included: never converted

    def constant(self, _text: str) -> _Number:
        self.constants = True  # NaN, Infinity: not JSON
        return _Number()


def _has_surrogate(doc: Any) -> bool:
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE_RE.search(item):
                return True
        elif isinstance(item, _Pairs):
            for key, value in item:
                stack += [key, value]
        elif isinstance(item, list):
            stack += item
    return False


def as_received(value: ShortStr) -> ShortStr:
    """A short string property as pika hands it over: text when it is UTF-8, else bytes."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def judge(raw: bytes, transport_correlation_id: ShortStr = None) -> Judgement:
    """VALID, INVALID or UNSURE for one body and the correlation id of its AMQP properties."""
    transport_correlation_id = as_received(transport_correlation_id)
    if len(raw) > MAX_PAYLOAD_BYTES:
        return Judgement(Verdict.INVALID, f"{len(raw)} bytes > {MAX_PAYLOAD_BYTES}")
    if raw.startswith(BOM):
        inner = judge(raw[len(BOM) :], transport_correlation_id)
        return inner if inner.verdict is Verdict.INVALID else Judgement(Verdict.UNSURE, "UTF-8 BOM")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Judgement(Verdict.INVALID, "not UTF-8")
    hooks = _Decoding()
    try:
        doc = json.loads(
            text,
            object_pairs_hook=hooks.pairs,
            parse_int=hooks.number,
            parse_float=hooks.number,
            parse_constant=hooks.constant,
        )
    except RecursionError:
        return Judgement(Verdict.INVALID, "nested too deep")
    except ValueError as exc:  # JSONDecodeError
        return Judgement(Verdict.INVALID, f"not JSON: {str(exc)[:80]}")
    lenient = "NaN/Infinity literal" if hooks.constants else ""
    if b"\\u" in raw and _has_surrogate(doc):  # raw was UTF-8: only an escape makes one
        lenient = "lone surrogate escape"
    if not hooks.duplicates:
        if lenient:
            return Judgement(Verdict.INVALID, lenient, _message_id_of(doc))
        found = _judge_request(doc, transport_correlation_id)
        return found
    if lenient:
        return Judgement(Verdict.UNSURE, f"duplicate keys and {lenient}")
    first = _judge_request(doc, transport_correlation_id, policy="first")
    last = _judge_request(doc, transport_correlation_id, policy="last")
    if first.verdict is Verdict.INVALID and last.verdict is Verdict.INVALID:
        return Judgement(Verdict.INVALID, f"duplicate keys; {last.reason}", last.message_id)
    return Judgement(Verdict.UNSURE, "duplicate keys decide the outcome")


def _message_id_of(doc: Any) -> str | None:
    if isinstance(doc, _Pairs):
        value = doc.as_dict("last").get("message_id")
        return value if isinstance(value, str) else None
    return None


class _Rules:
    """Collects broken rules (violations) and cases the contract does not settle (doubts)."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.doubts: list[str] = []

    def text(
        self,
        name: str,
        value: Any,
        *,
        limit: int | None,
        lenient: bool,
        empty_is_doubt: bool = False,
    ) -> None:
        """A string of 1..limit UTF-8 bytes (``None``: any) without control characters
        (``lenient``: \\t \\n \\r allowed, as in body and metadata values)."""
        if not isinstance(value, str):
            self.violations.append(f"{name} is not a string")
            return
        size = len(value.encode("utf-8", "surrogatepass"))
        if size == 0:
            (self.doubts if empty_is_doubt else self.violations).append(f"{name} is empty")
            return
        if limit is not None and size > limit:
            self.violations.append(f"{name} is {size} UTF-8 bytes > {limit}")
        for char in set(value):
            code = ord(char)
            if (code < 0x20 and not (lenient and char in "\t\n\r")) or 0x7F <= code <= 0x9F:
                self.violations.append(f"{name} holds control character U+{code:04X}")  # Unicode's Cc
            elif unicodedata.category(char) in _DOUBTFUL_CATEGORIES:
                self.doubts.append(f"{name} holds U+{code:04X} (a format or unassigned character)")
        if not value.strip():
            self.doubts.append(f"{name} is blank")


def _judge_request(doc: Any, transport_cid: ShortStr, policy: str = "last") -> Judgement:
    if not isinstance(doc, _Pairs):
        return Judgement(Verdict.INVALID, "not a JSON object")
    data = doc.as_dict(policy)
    rules = _Rules()
    unknown = sorted(set(data) - KNOWN_FIELDS)
    if unknown:
        rules.violations.append(f"unknown field {_preview(unknown[0], 40)}")
    message_id = data.get("message_id")
    if message_id is not None and not (isinstance(message_id, str) and _ID_RE.fullmatch(message_id)):
        rules.violations.append("message_id is not 1-128 of [A-Za-z0-9._:-]")
    channel = data.get("channel")
    if not (isinstance(channel, str) and channel in ("sms", "im")):
        rules.violations.append("channel is not sms or im")
    to = data.get("to")
    if channel == "sms" and not (isinstance(to, str) and _E164_RE.fullmatch(to)):
        rules.violations.append("to is not an E.164 number")
    elif channel == "im":
        rules.text("to", to, limit=MAX_ADDRESS_BYTES, lenient=False)
    elif not isinstance(to, str):
        rules.violations.append("to is not a string")
    body = data.get("body")
    rules.text("body", body, limit=None, lenient=True)
    if isinstance(body, str) and len(body) > MAX_BODY_CHARS:
        rules.violations.append(f"body is {len(body)} characters > {MAX_BODY_CHARS}")
    correlation = data.get("correlation_id")
    if correlation is not None:
        rules.text("correlation_id", correlation, limit=MAX_CORRELATION_BYTES, lenient=False)
    elif isinstance(transport_cid, bytes):
        rules.violations.append("transport correlation_id is not UTF-8")
    elif transport_cid == "":
        rules.doubts.append("transport correlation_id is empty")
    elif transport_cid is not None:
        rules.text("transport correlation_id", transport_cid, limit=MAX_CORRELATION_BYTES, lenient=False)
    if data.get("from") is not None:
        rules.text("from", data["from"], limit=MAX_ADDRESS_BYTES, lenient=False)
    provider = data.get("provider")
    if provider is not None:
        rules.text("provider", provider, limit=MAX_PROVIDER_BYTES, lenient=False)
        if not (isinstance(provider, str) and provider in PROVIDERS):
            rules.violations.append("unknown provider")
    _judge_metadata(data.get("metadata"), rules, policy)
    found = message_id if isinstance(message_id, str) else None
    if rules.violations:
        return Judgement(Verdict.INVALID, rules.violations[0], found)
    if rules.doubts:
        return Judgement(Verdict.UNSURE, rules.doubts[0], found)
    fields = dict(data)
    if isinstance(fields.get("metadata"), _Pairs):
        fields["metadata"] = fields["metadata"].as_dict(policy)
    return Judgement(Verdict.VALID, "valid", found, fields)


def _judge_metadata(value: Any, rules: _Rules, policy: str) -> None:
    if value is None:
        return
    if not isinstance(value, _Pairs):
        rules.violations.append("metadata is not an object")
        return
    metadata = value.as_dict(policy)
    for key, item in metadata.items():
        rules.text("metadata key", key, limit=MAX_METADATA_KEY_BYTES, lenient=False)
        rules.text("metadata value", item, limit=None, lenient=True, empty_is_doubt=True)
    if rules.violations:
        return
    # The bound is on the object as JSON; implementations may write it more or less tightly, so
    # between the raw bytes of keys and values and the loosest JSON writing the case is open.
    least = sum(
        len(k.encode("utf-8", "surrogatepass")) + len(v.encode("utf-8", "surrogatepass"))
        for k, v in metadata.items()
    )
    most = len(json.dumps(metadata, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if least > MAX_METADATA_BYTES:
        rules.violations.append(f"metadata is more than {MAX_METADATA_BYTES} bytes")
    elif most > MAX_METADATA_BYTES:
        rules.doubts.append("metadata size is near its bound")


# --- generators ---------------------------------------------------------------------------------


def _pick(values: Iterable[T]) -> st.SearchStrategy[T]:
    """``sampled_from`` on a tuple: Hypothesis reuses one strategy per distinct tuple, so a
    composite that samples does not validate a new strategy on every draw."""
    return st.sampled_from(tuple(values))


class IdSource:
    """Fresh message_ids for one run (its store is its own, so a counter is unique enough).

    Every id has the same length, and no draw depends on its value: Hypothesis replays an
    example's choices and requires the same draws (the id differs, the shape does not).
    """

    def __init__(self, prefix: str = "fz") -> None:
        self.prefix, self.count = prefix, 0

    def take(self) -> str:
        self.count += 1
        return f"{self.prefix}{self.count:08x}-"


ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
MULTIBYTE = ("é", "€", "中", "😀", "👍🏽", "ß", "\u0301", "𝔘", "Ω", "ﷺ")
CONTROLS = tuple(chr(c) for c in range(0x20))
STRICT_CONTROLS = CONTROLS  # refused in ids, addresses, provider, metadata keys
LENIENT_CONTROLS = tuple(c for c in CONTROLS if c not in "\t\n\r")  # refused in body and values
LONE_SURROGATES = ("\ud800", "\udbff", "\udc00", "\udfff", "\ude00\ud83d", "\ud83d\ud83d")

_safe_char = st.one_of(
    st.characters(categories=["L", "M", "N", "P", "S"], codec="utf-8"),
    _pick([c for c in MULTIBYTE if len(c) == 1]),
    st.just(" "),
)
#: Units a text is made of: curated ones (multi-byte, emoji, combining marks) or arbitrary ones.
UNITS = ("a", "Ab9", "€", "😀", "中文", "é", "e\u0301", "👍🏽", "ß𝔘", "x€😀", "ﷺ", "-_.:", '"\\/')
LENIENT_UNITS = (*UNITS, "a\nb", "\r\n", "x\ty", "€\n")
_unit = st.one_of(_pick(UNITS), st.text(_safe_char, min_size=1, max_size=3))
_lenient_unit = st.one_of(
    _pick(LENIENT_UNITS), st.text(st.one_of(_safe_char, _pick("\n\r\t")), min_size=1, max_size=3)
)


def fill_bytes(unit: str, target: int) -> str:
    """``unit`` repeated to exactly ``target`` UTF-8 bytes (ASCII "a" pads the last few)."""
    size = len(unit.encode("utf-8"))
    text = unit * (target // size)
    used = len(text.encode("utf-8"))
    for char in unit:
        width = len(char.encode("utf-8"))
        if used + width > target:
            break
        text, used = text + char, used + width
    return text + "a" * (target - used)


def fill_chars(unit: str, count: int) -> str:
    """``unit`` repeated to exactly ``count`` code points (multi-byte ones make it longer in bytes)."""
    return (unit * (count // len(unit) + 1))[:count]


@functools.cache
@st.composite
def sized_text(draw: st.DrawFn, limit: int, *, lenient: bool = False, over: bool = False) -> str:
    """A string near ``limit`` bytes: at it, one under, or (``over``) just past it in bytes, or at
    the limit in characters but over it in bytes (the case a character count lets through)."""
    unit = draw(_lenient_unit if lenient else _unit)
    if unit[0] in " \t\n\r":
        unit = "x" + unit  # a blank string is a doubt, not a case
    if over:
        how = draw(_pick(["bytes+1", "bytes+2", "bytes+3", "chars", "chars+1", "double"]))
        if how.startswith("chars"):
            unit = draw(_pick(MULTIBYTE[1:5]))  # 3 or 4 bytes each
            return fill_chars(unit, limit + (how == "chars+1"))
        extra = {"bytes+1": 1, "bytes+2": 2, "bytes+3": 3, "double": limit}[how]
        return fill_bytes(unit, limit + extra)
    how = draw(_pick(["short", "limit", "limit-1", "any", "one"]))
    if how == "short":
        return unit
    if how == "one":
        return unit[0] if unit[0] not in " \t\n\r" else "x"
    target = {"limit": limit, "limit-1": limit - 1}.get(how) or draw(st.integers(1, limit))
    return fill_bytes(unit, target)


@functools.cache
@st.composite
def message_ids(draw: st.DrawFn, ids: IdSource) -> str:
    """A fresh id: the token alone, padded to 128 characters, or to a length in between."""
    token = ids.take()
    how = draw(_pick(["token", "max", "any"]))
    if how == "token":
        return token
    pad = ID_ALPHABET[draw(st.integers(0, len(ID_ALPHABET) - 1)) :]
    length = MAX_MESSAGE_ID if how == "max" else max(len(token), draw(st.integers(1, MAX_MESSAGE_ID)))
    return fill_chars(token + pad * MAX_MESSAGE_ID, length)


@functools.cache
@st.composite
def e164(draw: st.DrawFn, digits: int | None = None) -> str:
    """A number of ``digits`` digits (7 and 15 are the bounds) after the "+"."""
    count = digits or draw(_pick([7, 15, 8, 11, 12, 14]))
    return f"+{draw(st.integers(10 ** (count - 1), 10**count - 1))}"


@functools.cache
@st.composite
def metadata(draw: st.DrawFn) -> dict[str, str]:
    """A few entries, none, or one entry that makes the object exactly 4,096 bytes of JSON."""
    how = draw(_pick(["small", "small", "at_bound", "empty"]))
    if how == "empty":
        return {}
    if how == "at_bound":  # exactly 4096 bytes as JSON with ", " and ": " separators
        key = "abcdefgh"[: draw(st.integers(1, 8))]
        unit = draw(_pick(["a", "€", "😀", "ab€"]))
        return {key: fill_bytes(unit, MAX_METADATA_BYTES - len(key) - 8)}
    keys = draw(st.lists(sized_text(24), min_size=1, max_size=6, unique=True))
    return {k: draw(sized_text(300, lenient=True)) for k in keys}


@functools.cache
@st.composite
def request_fields(draw: st.DrawFn, ids: IdSource) -> dict[str, Json]:
    """The fields of a valid request (the oracle has the last word), in the order written."""
    channel = draw(_pick(["sms", "im"]))
    fields: dict[str, Json] = {}
    how_id = draw(_pick(["id"] * 15 + ["absent", "null"]))
    if how_id != "absent":
        fields["message_id"] = draw(message_ids(ids)) if how_id == "id" else None
    fields["channel"] = channel
    fields["to"] = draw(e164()) if channel == "sms" else draw(sized_text(MAX_ADDRESS_BYTES))
    fields["body"] = draw(sized_text(MAX_BODY_CHARS, lenient=True))
    for name, values in _optional_fields().items():
        how = draw(_pick(["absent", "absent", "value", "value", "null"]))
        if how != "absent":
            fields[name] = draw(values) if how == "value" else None
    order = draw(st.permutations(list(fields)))
    return {name: fields[name] for name in order}


@functools.cache
def _optional_fields() -> dict[str, st.SearchStrategy[Json]]:
    return {
        "correlation_id": sized_text(MAX_CORRELATION_BYTES),
        "from": sized_text(MAX_ADDRESS_BYTES),
        "provider": _pick(USABLE_PROVIDERS),
        "metadata": metadata().map(lambda m: Obj(tuple(m.items()))),
    }


STYLES = tuple(
    Style(escapes, slash, item_sep, key_sep, lead, trail)
    for escapes in ("raw", "ascii", "mixed")
    for slash in (False, True)
    for item_sep, key_sep in ((", ", ": "), (",", ":"), (",\n  ", " : "), ("\t,\r\n", "\n:\t"))
    for lead, trail in (("", ""), (" ", "\n"), ("\r\n\t ", " \t"))
)


def styles() -> st.SearchStrategy[Style]:
    """How a request is written: escapes, separators, whitespace around it (one draw)."""
    return _pick(STYLES)


def _obj(fields: dict[str, Json]) -> Obj:
    return Obj(tuple(fields.items()))


@st.composite
def valid_requests(draw: st.DrawFn, ids: IdSource) -> Payload:
    """A valid request, written in one of the styles."""
    return Payload("valid", render(_obj(draw(request_fields(ids))), draw(styles())))


def _huge_number(digits: int, form: str) -> Raw:
    body = "9" * digits
    return Raw({"int": body, "neg": "-" + body, "frac": "0." + body, "exp": f"1e{body}"}[form])


_numbers = st.one_of(
    _pick([0, -1, 1.5, -0.0, 2**64, 10**30]),
    st.builds(
        _huge_number,
        _pick([20, 400, 4300, 4301, 5000, 100_000]),
        _pick(["int", "neg", "frac", "exp"]),
    ),
    _pick([Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e999"), Raw("-0"), Raw("1E-400")]),
)
_wrong_types: st.SearchStrategy[Json] = st.one_of(
    _numbers,
    _pick([True, False, [], ["x"], Obj(()), Obj((("a", "b"),)), [None]]),
)


def _entry(key: str, value: Json) -> Obj:
    return Obj(((key, value),))


@functools.cache
def bad_values(name: str, *, small: bool = False) -> st.SearchStrategy[Json]:
    """Values that break the rule of field ``name`` (the oracle has the last word), a wrong type
    one time in four; ``small``: none longer than a few kilobytes."""
    if small:
        return st.one_of(_small_wrong_types, _small_bad_values[name], _small_bad_values[name])
    specific: st.SearchStrategy[Json]
    control = _pick(STRICT_CONTROLS)
    if name == "message_id":
        specific = st.one_of(
            st.just(""),
            st.text(_pick(ID_ALPHABET), min_size=129, max_size=140),
            _pick(["has space", "é", "a/b", "١٢٣", "x\n", "ab\x00", "a\u200bb", "x" * 129]),
        )
    elif name == "channel":
        specific = _pick(["", "SMS", "email", " sms", "sms\x00", "im\n", "ｓｍｓ"])
    elif name == "to_sms":
        specific = st.one_of(
            e164(digits=6),
            e164(digits=16),
            _pick(["+0123456789", "447700900123", "+44 7700 900123", "+٤٤٧٧٠٠٩٠٠١٢٣", "+4477009001\n", ""]),
        )
    elif name in ("to_im", "from"):
        specific = st.one_of(
            sized_text(MAX_ADDRESS_BYTES, over=True),
            _with(sized_text(MAX_ADDRESS_BYTES), control),
            st.just(""),
        )
    elif name == "body":
        specific = st.one_of(
            sized_text(MAX_BODY_CHARS, lenient=True, over=True),
            _with(sized_text(MAX_BODY_CHARS, lenient=True), _pick(LENIENT_CONTROLS)),
            st.just(""),
            _pick([70_000, 70_000, 70_000, 1_100_000]).map(lambda n: "b" * n),
        )
    elif name == "correlation_id":
        specific = st.one_of(
            sized_text(MAX_CORRELATION_BYTES, over=True),
            _with(sized_text(MAX_CORRELATION_BYTES), control),
            st.just(""),
        )
    elif name == "provider":
        specific = st.one_of(
            _pick([*OVERLONG_PROVIDERS, "nope", "SIM", "", "sim\x00", "sim ", "ſim"]),
            sized_text(600).map(lambda s: "unknown-" + s),
        )
    else:  # metadata
        specific = st.one_of(
            _pick(["a", "", Raw("[" * 50 + "]" * 50)]),
            st.builds(_entry, sized_text(20), _wrong_types),
            st.builds(_entry, _with(sized_text(20), control), sized_text(20)),
            st.builds(_entry, sized_text(20), _with(sized_text(50), _pick(LENIENT_CONTROLS))),
            st.builds(
                lambda unit, n: _entry("big", fill_bytes(unit, n)),
                _pick(["a", "€", "😀"]),
                _pick([MAX_METADATA_BYTES + 1, MAX_METADATA_BYTES + 3, 20_000, 200_000]),
            ),
            st.integers(1000, 20_000).map(lambda n: Obj(tuple((f"k{i}", "v") for i in range(n)))),
        )
    return st.one_of(_wrong_types, specific, specific, specific)


_small_wrong_types: st.SearchStrategy[Json] = _pick(
    [0, -1, 1.5, True, False, [], ["x"], Obj(()), Obj((("a", "b"),)), Raw("1e999"), Raw("-0")]
)
_small_bad_values: dict[str, st.SearchStrategy[Json]] = {
    "body": _pick(["", "b" * (MAX_BODY_CHARS + 1), "a\x00b", "a\x1bb", "\x7f"]),
    "channel": _pick(["", "SMS", "email", "sms\x00"]),
    "to_im": _pick(["", "t" * (MAX_ADDRESS_BYTES + 1), "€" * 86, "a\nb", "\x00"]),
    "provider": _pick(["", "nope", "sim\x00", *OVERLONG_PROVIDERS]),
    "message_id": _pick(["", "has space", "x" * 129, "é"]),
}


def _with(texts: st.SearchStrategy[str], chars: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A string from ``texts`` with one of ``chars`` put at its start, middle or end."""

    def put(text: str, char: str, where: int) -> str:
        at = (0, len(text) // 2, len(text))[where]
        return text[:at] + char + text[at:]

    return st.builds(put, texts, chars, st.integers(0, 2))


#: What broken_fields breaks: a field, or the set of fields (one missing, an unknown one added).
BREAKABLE: tuple[str, ...] = (
    "message_id",
    "channel",
    "to",
    "body",
    "correlation_id",
    "from",
    "provider",
    "metadata",
)
BREAKABLE += ("missing", "unknown", "long_unknown")


@st.composite
def broken_fields(draw: st.DrawFn, ids: IdSource) -> Payload:
    """A valid request with one field broken, missing, or an unknown one added."""
    fields = draw(request_fields(ids))
    how = draw(_pick(BREAKABLE))
    if how == "missing":
        del fields[draw(_pick(["channel", "to", "body"]))]
    elif how == "unknown":
        name = draw(st.one_of(_pick(["Body", "to ", "message-id", "", "__proto__"]), st.text(max_size=8)))
        if name not in KNOWN_FIELDS:
            fields[name] = draw(st.one_of(st.text(max_size=5), _wrong_types))
    elif how == "long_unknown":  # the reason must still fit in 512 bytes
        fields[fill_bytes(draw(_unit), draw(_pick([600, 5000, 60_000])))] = "x"
    elif how == "to":
        fields["to"] = draw(bad_values("to_sms" if fields["channel"] == "sms" else "to_im"))
    else:
        fields[how] = draw(bad_values(how))
    return Payload(f"broken:{how}", render(_obj(fields), draw(styles())))


@st.composite
def lone_surrogates(draw: st.DrawFn, ids: IdSource) -> Payload:
    """A request with a lone (or reversed, or doubled high) surrogate escape in one string."""
    fields = draw(request_fields(ids))
    name = draw(_pick(["body", "to", "correlation_id", "from", "metadata_key", "metadata_value"]))
    bad = draw(_pick(LONE_SURROGATES))
    if name.startswith("metadata"):
        fields["metadata"] = Obj(((bad, "v"),) if name == "metadata_key" else (("k", "v" + bad),))
    elif name == "to" and fields["channel"] == "sms":
        fields["to"] = str(fields["to"]) + bad
    else:
        fields[name] = bad + "x"
    return Payload(f"surrogate:{name}", render(_obj(fields), draw(styles())))


@st.composite
def duplicate_keys(draw: st.DrawFn, ids: IdSource) -> Payload:
    """A key written twice; only cases where both readings break a rule are clear (the oracle)."""
    fields = draw(request_fields(ids))
    name = draw(_pick(["body", "channel", "to", "provider", "message_id"]))
    first = draw(bad_values("to_im" if name == "to" else name, small=True))
    second = draw(bad_values("to_im" if name == "to" else name, small=True))
    pairs = [(k, v) for k, v in fields.items() if k != name]
    at = draw(st.integers(0, len(pairs)))
    pairs[at:at] = [(name, first), (name, second)]
    return Payload(f"duplicate:{name}", render(Obj(tuple(pairs)), draw(styles())))


@st.composite
def deep_json(draw: st.DrawFn, ids: IdSource) -> Payload:
    """Nesting from 2 to 100,000 levels, alone or as the value of a field."""
    depth = draw(_pick([2, 16, 17, 64, 999, 1000, 1001, 5000, 100_000]))
    shape = draw(_pick(["array", "object", "mixed", "unclosed"]))
    if shape == "array":
        nest = "[" * depth + "]" * depth
    elif shape == "object":
        nest = '{"a":' * depth + "1" + "}" * depth
    elif shape == "mixed":
        nest = '[{"a":' * (depth // 2) + "null" + "}]" * (depth // 2)
    else:
        nest = "[" * depth
    where = draw(_pick(["top", "body", "metadata", "unknown"]))
    if where == "top":
        return Payload(f"deep:{shape}", nest.encode())
    fields = draw(request_fields(ids))
    if where == "metadata":
        fields["metadata"] = Obj((("k", Raw(nest)),))
    else:
        fields["nested" if where == "unknown" else "body"] = Raw(nest)
    return Payload(f"deep:{shape}:{where}", render(_obj(fields)))


@st.composite
def wide_json(draw: st.DrawFn, ids: IdSource) -> Payload:
    """Arrays and objects of up to 60,000 members, alone or as the metadata."""
    width = draw(_pick([100, 1000, 5000, 60_000]))
    shape = draw(_pick(["array", "object", "metadata", "strings"]))
    if shape == "array":
        return Payload("wide:array", ("[" + "0," * (width - 1) + "0]").encode())
    if shape == "strings":
        return Payload("wide:strings", ("[" + '"x",' * (width - 1) + '"x"]').encode())
    pairs = ",".join(f'"k{i}":"v"' for i in range(width))
    if shape == "object":
        return Payload("wide:object", ("{" + pairs + "}").encode())
    fields = draw(request_fields(ids))
    fields["metadata"] = Raw("{" + pairs + "}")
    return Payload("wide:metadata", render(_obj(fields)))


@st.composite
def numbers(draw: st.DrawFn, ids: IdSource) -> Payload:
    """A number (up to 100,000 digits, NaN, 1e999 ...) alone or as the value of a field."""
    number = draw(_numbers)
    where = draw(_pick(["top", "body", "to", "message_id", "metadata", "unknown"]))
    if where == "top":
        return Payload("number:top", render(number))
    fields = draw(request_fields(ids))
    if where == "metadata":
        fields["metadata"] = Obj((("n", number),))
    else:
        fields["n" if where == "unknown" else where] = number
    return Payload(f"number:{where}", render(_obj(fields), draw(styles())))


@st.composite
def not_objects(draw: st.DrawFn, ids: IdSource) -> Payload:
    """JSON that is not one object: a string, null, an array of requests, two requests, nothing."""
    fields = draw(request_fields(ids))
    document = draw(_pick(["string", "null", "true", "array", "batch", "empty", "blank", "two", "garbage"]))
    one = render(_obj(fields))
    body = {
        "string": b'"{\\"channel\\": \\"sms\\"}"',
        "null": b"null",
        "true": b"true",
        "array": b"[]",
        "batch": b"[" + one + b"]",
        "empty": b"",
        "blank": b" \n\t\r ",
        "two": one + b"\n" + one,
        "garbage": one + b"x",
    }[document]
    return Payload(f"not_object:{document}", body)


@st.composite
def sized_payloads(draw: st.DrawFn, ids: IdSource) -> Payload:
    """A valid request padded with JSON whitespace to the size bound, or one byte past it."""
    good = render(_obj(draw(request_fields(ids))), draw(styles()))
    size = draw(_pick([MAX_PAYLOAD_BYTES - 1, MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES + 1, 100_000]))
    pad = draw(_pick([b" ", b"\n", b"\t", b"\r\n"]))
    padding = (pad * size)[: max(0, size - len(good))]
    return Payload("size", good + padding if draw(st.booleans()) else padding + good)


@st.composite
def mangled_bytes(draw: st.DrawFn, ids: IdSource) -> Payload:
    """A valid rendering, then broken at the byte level (the oracle decides what is left)."""
    good = render(_obj(draw(request_fields(ids))), draw(styles()))
    how = draw(_pick(["truncate", "insert", "flip", "bad_utf8", "bom", "raw_control"]))
    at = draw(st.integers(0, len(good)))
    if how == "truncate":
        body = good[:at]
    elif how == "insert":
        body = good[:at] + bytes([draw(st.integers(0, 255))]) + good[at:]
    elif how == "flip":
        at = min(at, len(good) - 1)
        body = good[:at] + bytes([good[at] ^ (1 << draw(st.integers(0, 7)))]) + good[at + 1 :]
    elif how == "bom":
        body = BOM + good
    else:  # inside the body's string value: invalid UTF-8, or a raw (unescaped) control character
        bad = draw(
            _pick([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80"])
            if how == "bad_utf8"
            else _pick([b"\x00", b"\x01", b"\x1f", b"\n"])
        )
        marker = b'"body"'
        start = good.find(marker)
        quote = good.find(b'"', good.find(b":", start) + 1) if start >= 0 else -1
        body = good[: quote + 1] + bad + good[quote + 1 :] if quote >= 0 else good + bad
    return Payload(f"bytes:{how}", body)


def arbitrary_bytes() -> st.SearchStrategy[Payload]:
    """Any bytes, and a few that parsers trip on (NUL, BOM, UTF-16)."""
    return st.one_of(
        st.binary(max_size=300),
        _pick([b"\x00", b"\xff\xfe{\x00}", BOM + b"{}", b"{}", b"{", b"}", b'{"":""}', b"\x00" * 10_000]),
    ).map(lambda body: Payload("bytes:arbitrary", body))


# --- AMQP property generators -------------------------------------------------------------------

_header_key = st.one_of(
    _pick((b"k", b"a-b", "ключ".encode(), b"\xff\xfe", b"", b"k" * 255, b"K", b"tab\tname")),
    st.binary(max_size=12),
).filter(lambda k: not k.lower().startswith(b"x-"))


def _float32(value: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


def _field(code: bytes) -> Callable[[Any], Field]:
    return lambda value: Field(code, value)


_plain_double = st.floats(min_value=-9e18, max_value=9e18, allow_nan=False)
_big_double = st.floats(min_value=1e19, max_value=1.7e308) | st.floats(min_value=-1.7e308, max_value=-1e19)
_header_leaf: st.SearchStrategy[Field] = st.one_of(
    _pick(("", "text", "€😀", "a" * 300)).map(lambda s: Field(b"S", s.encode())),
    st.binary(max_size=12).map(_field(b"S")),  # not always UTF-8
    st.binary(max_size=12).map(_field(b"x")),
    st.booleans().map(_field(b"t")),
    st.integers(-128, 127).map(_field(b"b")),
    st.integers(0, 255).map(_field(b"B")),
    st.integers(-(2**15), 2**15 - 1).map(_field(b"s")),
    st.integers(0, 2**16 - 1).map(_field(b"u")),
    st.integers(-(2**31), 2**31 - 1).map(_field(b"I")),
    st.integers(0, 2**32 - 1).map(_field(b"i")),
    st.integers(-(2**63), 2**63 - 1).map(_field(b"l")),
    _plain_double.map(_field(b"d")),
    _big_double.map(_field(b"d")),  # pika reads it as an int it cannot write back
    st.floats(min_value=_float32(-8e18), max_value=_float32(8e18), width=32).map(_field(b"f")),
    st.floats(min_value=_float32(1e19), max_value=_float32(3e38), width=32).map(_field(b"f")),
    st.tuples(st.integers(0, 255), st.integers(-(2**31), 2**31 - 1)).map(_field(b"D")),
    st.integers(0, 253_402_300_799).map(_field(b"T")),  # up to 9999-12-31 (pika decodes no later)
    st.just(Field(b"V")),
)
#: Leaves, and arrays and tables of leaves (nested once more inside a table now and then).
_header_field: st.SearchStrategy[Field] = st.one_of(
    _header_leaf,
    st.lists(_header_leaf, max_size=3).map(lambda items: Field(b"A", tuple(items))),
    st.lists(st.tuples(_header_key, _header_leaf), max_size=3).map(lambda items: Field(b"F", tuple(items))),
    _header_leaf.map(lambda leaf: Field(b"F", ((b"in", Field(b"A", (Field(b"F", ((b"deep", leaf),)),))),))),
)
_headers: st.SearchStrategy[HeaderTable] = st.one_of(
    st.lists(st.tuples(_header_key, _header_field), min_size=1, max_size=4).map(tuple),
    st.integers(5_000, 40_000).map(lambda n: ((b"long", Field(b"S", b"L" * n)),)),
    st.just(((b"big-float", Field(b"d", 1e19)),)),
)
_short_str: st.SearchStrategy[ShortStr] = st.one_of(
    _pick(("", "a" * 255, "\x00", "é" * 127, "application/json", "text/plain; charset=latin1", "€😀")),
    _pick((b"\xff", b"\xc3(", b"a\x00b", b"\xed\xa0\x80")),  # not UTF-8: pika hands over bytes
    st.text(max_size=8),
)
_correlation_property: st.SearchStrategy[ShortStr] = st.one_of(
    _pick(("c-1", "x" * 128, "€" * 42 + "ab", "€" * 43, "c" * 129, "c" * 255, "a\x00b", "a\nb", "\x7f", "")),
    _pick((b"\xff\xfe", b"ok-bytes", b"\xc3\xa9t\xc3\xa9")),  # bytes: pika decodes the UTF-8 ones
    st.text(_pick(ID_ALPHABET), min_size=1, max_size=8),
)
_property_values: dict[str, st.SearchStrategy[Any]] = {
    "content_type": _short_str,
    "content_encoding": _short_str,
    "headers": _headers,
    "delivery_mode": _pick((1, 2)),
    "priority": st.integers(0, 255),
    "correlation_id": _correlation_property,
    "reply_to": _short_str,
    "expiration": st.integers(3_600_000, 2**32 - 1).map(str),
    "message_id": _short_str,
    "timestamp": st.integers(0, 2**64 - 1),
    "type": _short_str,
    "user_id": st.just("guest"),
    "app_id": _short_str,
    "cluster_id": _short_str,
}
_property_names = st.lists(_pick(tuple(_property_values)), max_size=5, unique=True)


@st.composite
def amqp_properties(draw: st.DrawFn) -> Properties:
    """Mostly none; else a few odd but publishable ones (the broker refuses a user_id other than
    its user, a delivery_mode other than 1 and 2, and a non-numeric expiration; pika on the
    consumer side cannot decode NaN doubles or timestamps past 9999, which are left out)."""
    names = draw(_property_names)
    chosen = {name: draw(_property_values[name]) for name in names}
    return Properties(**chosen, fill_slack=draw(_pick([None] * 60 + [0, 1, 40, 200])))


#: Kinds by weight: valid requests about two in five.
KINDS: tuple[str, ...] = ("valid",) * 8 + ("broken",) * 4 + ("mangled", "arbitrary", "deep", "wide", "number")
KINDS += ("surrogate", "duplicate", "not_object", "size")


def payloads(ids: IdSource) -> st.SearchStrategy[Payload]:
    """One payload of any kind, with properties."""
    kinds: dict[str, st.SearchStrategy[Payload]] = {
        "valid": valid_requests(ids),
        "broken": broken_fields(ids),
        "mangled": mangled_bytes(ids),
        "arbitrary": arbitrary_bytes(),
        "deep": deep_json(ids),
        "wide": wide_json(ids),
        "number": numbers(ids),
        "surrogate": lone_surrogates(ids),
        "duplicate": duplicate_keys(ids),
        "not_object": not_objects(ids),
        "size": sized_payloads(ids),
    }

    @st.composite
    def one(draw: st.DrawFn) -> Payload:
        payload = draw(kinds[draw(_pick(KINDS))])
        return replace(payload, properties=draw(amqp_properties()))

    return one()


def batches(ids: IdSource, *, size: int | None = None) -> st.SearchStrategy[list[Payload]]:
    """A batch: about 36 payloads on average, in runs of up to 20, which shrinks down to a single
    payload (a flat list of about 36 would need a minimum size that shrinking cannot go under).
    ``size``: exactly that many instead (for long runs, where nothing shrinks)."""
    if size is not None:
        return st.lists(payloads(ids), min_size=size, max_size=size)
    runs = st.lists(st.lists(payloads(ids), min_size=1, max_size=20), min_size=1, max_size=12)
    return runs.map(lambda chunks: [payload for chunk in chunks for payload in chunk])


# --- the harness --------------------------------------------------------------------------------


def provider_config() -> str:
    """The TOML of the providers: instant simulated ones, one per configured name."""
    return "".join(
        f'[providers."{name}"]\ntype = "simulated"\nlatency_ms = 0\nseed = 1\n\n' for name in PROVIDERS
    )


@dataclass
class Totals:
    """Figures of a run."""

    published: int = 0
    valid: int = 0
    invalid: int = 0
    unsure: int = 0
    delivered: int = 0
    rejected: int = 0
    mismatches: int = 0
    crashes: int = 0
    bytes: int = 0
    untracked: int = 0  # valid without a message_id: smeg makes one up, so only "not rejected" is checked
    kinds: Counter[str] = field(default_factory=Counter)
    errors_logged: Counter[str] = field(default_factory=Counter)  # smeg's error lines, by event


@dataclass
class _Entry:
    payload: Payload
    judgement: Judgement
    watch_store: bool = False  # an invalid payload with an id of its own: seen in the store = accepted


class SmegProcess:
    """One ``smeg run`` subprocess: SQLite store in ``workdir``, queues under ``prefix``; the
    code of ``root`` (this checkout by default; another one to fuzz an older version)."""

    def __init__(self, workdir: Path, amqp_url: str, prefix: str, root: Path = ROOT) -> None:
        self.workdir, self.amqp_url, self.prefix, self.root = workdir, amqp_url, prefix, root
        self.database_url = f"sqlite:///{workdir}/smeg.db"
        self.config = workdir / "providers.toml"
        self.config.write_text(provider_config(), encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMEG_")}
        env.update(
            SMEG_CONFIG=str(self.config),
            SMEG_DATABASE_URL=self.database_url,
            SMEG_AMQP_URL=self.amqp_url,
            SMEG_QUEUE_PREFIX=self.prefix,
            SMEG_LOG_FORMAT="json",
            SMEG_LOG_LEVEL="info",
            SMEG_BACKOFF_INITIAL="0.2",
            PYTHONPATH=str(self.root),
        )
        return env

    def start(self, timeout: float = 60.0) -> None:
        log = self.workdir / f"smeg-{len(self.logs)}.stderr"
        self.logs.append(log)
        with log.open("wb") as stderr, (self.workdir / "smeg.stdout").open("ab") as stdout:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "smeg_actors", "run"],
                cwd=self.root,
                env=self.env(),
                stdout=stdout,
                stderr=stderr,
            )
        deadline = time.monotonic() + timeout
        while '"runtime_started"' not in log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"smeg did not start (exit {self.process.poll()}):\n{self.stderr()[-3000:]}"
                )
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stderr(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.logs if path.exists())

    def death_cause(self) -> str:
        """The reason of smeg's last ``runtime_stopping`` line (why it exited), or "?"."""
        lines = self.logs[-1].read_text(errors="replace").splitlines() if self.logs else []
        for line in reversed(lines):
            if '"runtime_stopping"' in line or '"broker_connection_lost"' in line:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                return str(record.get("reason") or record.get("error"))
        return "?"

    def last_log_lines(self, count: int = 6) -> str:
        lines = self.logs[-1].read_text(errors="replace").splitlines() if self.logs else []
        return "\n".join(line[:400] for line in lines[-count:])

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM, then wait; the exit code (None if it had to be killed)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                return None
        return self.process.returncode

    def history_types(self, message_id: str) -> list[str]:
        """``smeg history <id> --json``: the event types, oldest first."""
        result = subprocess.run(
            [sys.executable, "-m", "smeg_actors", "history", message_id, "--json"],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"smeg history exited {result.returncode}: {result.stderr[-500:]}")
        return [record["type"] for record in json.loads(result.stdout)]


class IntakeFuzzer:
    """Runs batches of payloads through one live smeg and reports every payload whose fate is not
    the expected one. Use as a context manager (it deletes its queues at the end)."""

    def __init__(
        self,
        workdir: Path,
        amqp_url: str,
        *,
        prefix: str | None = None,
        stall: float = 5.0,
        smeg_root: Path = ROOT,
    ) -> None:
        self.amqp_url = amqp_url
        self.prefix = prefix or f"smegfuzz-{uuid.uuid4().hex[:10]}"
        self.stall = stall
        self.smeg = SmegProcess(workdir, amqp_url, self.prefix, smeg_root)
        self.ids = IdSource()
        self.totals = Totals()
        self.delivered_ids: list[str] = []
        self.exit_code: int | None = None
        self._seen_ids: Counter[str] = Counter()
        self._inbox: list[tuple[Any, bytes]] = []
        self._store: Any = None
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None

    # -- lifecycle

    def __enter__(self) -> IntakeFuzzer:
        self.smeg.start()
        self._connect()
        from adapters.event_store import MessageStore  # the project's own reader of the store

        self._store = MessageStore(self.smeg.database_url)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.smeg.alive():
            assert self.smeg.process is not None
            self.smeg.process.kill()
            self.smeg.process.wait(10)
        if self._store is not None:
            self._store.close()
        self._close_connection()
        self.delete_queues()

    def _connect(self) -> None:
        params = pika.URLParameters(self.amqp_url)
        params.heartbeat = 600
        self._connection = pika.BlockingConnection(params)
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        consumer = self._connection.channel()
        consumer.basic_consume(
            f"{self.prefix}.rejected",
            lambda _ch, _method, properties, body: self._inbox.append((properties, body)),
            auto_ack=True,
        )

    def _close_connection(self) -> None:
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.close()
            except pika.exceptions.AMQPError:
                pass
        self._connection = None

    def delete_queues(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        channel = connection.channel()
        for queue in ("send", "failed", "rejected"):
            channel.queue_delete(f"{self.prefix}.{queue}")
        channel.exchange_delete(f"{self.prefix}.events")
        connection.close()

    def _restart(self) -> None:
        """smeg died on a batch: drop what it left on its queue (it would die on it again)."""
        self.totals.crashes += 1
        self._close_connection()
        self.smeg.stop()
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        channel = connection.channel()
        for _ in range(50):
            channel.queue_purge(f"{self.prefix}.send")
            channel.queue_purge(f"{self.prefix}.rejected")
            time.sleep(0.05)
            if channel.queue_declare(f"{self.prefix}.send", passive=True).method.message_count == 0:
                break
        connection.close()
        self.smeg.start()
        self._inbox.clear()
        self._connect()

    # -- one batch

    def run_batch(self, batch: Sequence[Payload]) -> list[str]:
        """Publish ``batch`` and wait until each payload settled; the mismatches, described."""
        if not self.smeg.alive():
            self._restart()
        problems = [
            f"left on .rejected from before: {_describe_message(p, b)}" for p, b in self._take_inbox()
        ]
        published: list[_Entry] = []
        for entry in self._plan(batch):
            failed = self._publish(entry)
            problems += failed
            if not failed:
                published.append(entry)
        problems += self._settle(published)
        self.totals.mismatches += len(problems)
        return problems

    def _plan(self, batch: Sequence[Payload]) -> list[_Entry]:
        entries: list[_Entry] = []
        verdicts: dict[bytes, Verdict] = {}
        batch_ids: Counter[str] = Counter()
        for payload in batch:
            judgement = judge(payload.body, payload.properties.correlation_id)
            verdict = judgement.verdict
            message_id = judgement.message_id
            if (
                verdict is Verdict.VALID
                and message_id is not None
                and (self._seen_ids[message_id] or batch_ids[message_id])
            ):
                verdict = Verdict.UNSURE  # a repeated id is acked and ignored: not this test's case
            if verdicts.setdefault(payload.body, verdict) is not verdict:
                verdict = Verdict.UNSURE  # the same body both ways: a rejected copy would be ambiguous
            if verdict is Verdict.UNSURE:
                self.totals.unsure += 1
                continue
            if message_id is not None:
                batch_ids[message_id] += 1
            entries.append(_Entry(payload, judgement))
        for entry in entries:
            message_id = entry.judgement.message_id
            if message_id is None:
                continue
            if entry.judgement.verdict is Verdict.INVALID:
                entry.watch_store = (
                    _ID_RE.fullmatch(message_id) is not None
                    and batch_ids[message_id] == 1
                    and not self._seen_ids[message_id]
                )
        self._seen_ids.update(batch_ids)
        return entries

    def _publish(self, entry: _Entry) -> list[str]:
        payload = entry.payload
        try:
            self._channel.basic_publish(
                "", f"{self.prefix}.send", payload.body, payload.properties.wire(), mandatory=True
            )
        except (pika.exceptions.AMQPError, struct.error, ValueError) as exc:
            if self._connection is None or not self._connection.is_open:
                self._connect()
            elif not self._channel.is_open:
                self._channel = self._connection.channel()
                self._channel.confirm_delivery()
            return [f"harness: could not publish {payload!r}: {exc!r}"]
        self.totals.published += 1
        self.totals.bytes += len(payload.body)
        self.totals.kinds[payload.kind.split(":")[0]] += 1
        if entry.judgement.verdict is Verdict.VALID:
            self.totals.valid += 1
            self.totals.untracked += int(entry.judgement.message_id is None)
        else:
            self.totals.invalid += 1
        return []

    def _take_inbox(self) -> list[tuple[Any, bytes]]:
        if self._connection is not None and self._connection.is_open:
            self._connection.process_data_events(time_limit=0)
        taken, self._inbox = self._inbox, []
        return taken

    def _settle(self, entries: list[_Entry]) -> list[str]:
        problems: list[str] = []
        invalid: dict[bytes, list[_Entry]] = {}
        valid: dict[bytes, list[_Entry]] = {}
        waiting: dict[str, _Entry] = {}
        watched: dict[str, _Entry] = {}
        for entry in entries:
            if entry.judgement.verdict is Verdict.INVALID:
                invalid.setdefault(entry.payload.body, []).append(entry)
                if entry.watch_store and entry.judgement.message_id:
                    watched[entry.judgement.message_id] = entry
            else:
                valid.setdefault(entry.payload.body, []).append(entry)
                if entry.judgement.message_id is not None:
                    waiting[entry.judgement.message_id] = entry
        outstanding = sum(map(len, invalid.values())) + len(waiting)
        last_progress = next_store = next_watch = time.monotonic()
        while outstanding:
            assert self._connection is not None
            self._connection.process_data_events(time_limit=0.02)
            now = time.monotonic()
            for properties, body in self._take_inbox():
                last_progress = now
                if invalid.get(body):
                    entry = invalid[body].pop(0)
                    outstanding -= 1
                    self.totals.rejected += 1
                    if entry.judgement.message_id in watched:
                        del watched[entry.judgement.message_id]
                    problems += _check_rejected(entry, properties)
                elif valid.get(body):
                    entry = valid[body].pop(0)
                    why = _error_header(properties)
                    problems.append(f"valid payload rejected ({why!r}): {entry.payload!r}")
                    if waiting.pop(str(entry.judgement.message_id), None) is not None:
                        outstanding -= 1
                else:
                    problems.append(f"unexpected on .rejected: {_describe_message(properties, body)}")
            if now >= next_store:
                next_store = now + 0.1
                for message_id in list(waiting):
                    found = self._status(message_id)
                    if found is None:
                        continue
                    if found.status == "delivered":
                        entry = waiting.pop(message_id)
                        outstanding -= 1
                        last_progress = now
                        self.totals.delivered += 1
                        self.delivered_ids.append(message_id)
                        problems += _check_delivered(entry, found)
                    elif found.status == "failed":
                        entry = waiting.pop(message_id)
                        outstanding -= 1
                        problems.append(f"valid payload Failed ({found.last_error}): {entry.payload!r}")
            if now >= next_watch and watched:
                next_watch = now + 0.5
                for message_id in list(watched):
                    if self._status(message_id) is not None:
                        entry = watched.pop(message_id)
                        invalid[entry.payload.body].remove(entry)
                        outstanding -= 1
                        last_progress = now
                        why = entry.judgement.reason
                        problems.append(
                            f"invalid payload accepted as {message_id!r} ({why}): {entry.payload!r}"
                        )
            if not self.smeg.alive():
                unsettled = {id(e) for e in waiting.values()} | {id(e) for es in invalid.values() for e in es}
                suspect = next(
                    (e for e in entries if id(e) in unsettled and e.judgement.verdict is Verdict.INVALID),
                    None,
                )
                problems.append(
                    f"smeg exited with {self.smeg.exit_code()} ({self.smeg.death_cause()}) with "
                    f"{outstanding} payloads of the batch unsettled (the first invalid one of them is "
                    "the likely culprit: "
                    f"{suspect.payload if suspect else '-'!r}); its last lines:\n{self.smeg.last_log_lines()}"
                )
                break
            if now - last_progress > self.stall:
                for entries_left in invalid.values():
                    for entry in entries_left:
                        why = entry.judgement.reason
                        late = f"invalid payload not on .rejected after {self.stall:g}s ({why})"
                        problems.append(f"{late}: {entry.payload!r}")
                for entry in waiting.values():
                    problems.append(f"valid payload not Delivered after {self.stall:g}s: {entry.payload!r}")
                break
        return problems

    def _status(self, message_id: str) -> Any:
        try:
            return self._store.get_by_message_id(message_id)
        except Exception:
            return None

    # -- the end

    def finish(self, grace: float = 1.0) -> list[str]:
        """Late arrivals on .rejected, smeg still running, no traceback; then SIGTERM: exit 0."""
        problems: list[str] = []
        deadline = time.monotonic() + grace
        # A bounded window, no signal: a late duplicate (redelivery, dead letter) follows no marker.
        while time.monotonic() < deadline:
            assert self._connection is not None
            self._connection.process_data_events(time_limit=0.1)
            problems += [f"unexpected on .rejected: {_describe_message(p, b)}" for p, b in self._take_inbox()]
        if not self.smeg.alive():
            problems.append(f"smeg is not running: exit {self.smeg.exit_code()}")
        stderr = self.smeg.stderr()
        for line in stderr.splitlines():
            if '"level": "error"' in line or '"level": "critical"' in line:
                try:
                    self.totals.errors_logged[str(json.loads(line).get("event"))] += 1
                except ValueError:
                    self.totals.errors_logged["(not JSON)"] += 1
        if "Traceback" in stderr:
            at = stderr.index("Traceback")
            problems.append(f"a traceback on smeg's stderr:\n{stderr[at : at + 3000]}")
        if "broker_connection_lost" in stderr:
            problems.append("smeg lost its broker connection (broker_connection_lost) during the run")
        self.exit_code = self.smeg.stop()
        if self.exit_code != 0:
            problems.append(f"smeg exited {self.exit_code} on SIGTERM (expected 0)")
        self.totals.mismatches += len(problems)
        return problems


def _error_header(properties: Any) -> Any:
    headers = getattr(properties, "headers", None) or {}
    return headers.get("x-smeg-error")


def _describe_message(properties: Any, body: bytes) -> str:
    return f"{len(body)} bytes {_preview(body, 120)} x-smeg-error={_preview(_error_header(properties), 200)}"


def _check_rejected(entry: _Entry, properties: Any) -> list[str]:
    problems = []
    why = _error_header(properties)
    if not isinstance(why, str) or not why.strip():
        problems.append(f"x-smeg-error missing, empty or not UTF-8 ({why!r}) on {entry.payload!r}")
    elif len(why.encode("utf-8")) > MAX_ERROR_BYTES:
        size = len(why.encode("utf-8"))
        problems.append(
            f"x-smeg-error is {size} bytes > {MAX_ERROR_BYTES} ({_preview(why, 120)}) on {entry.payload!r}"
        )
    sent = entry.payload.properties.copied_headers()
    if sent is not None:
        got = dict(getattr(properties, "headers", None) or {})
        for name in [k for k in got if isinstance(k, str) and k.startswith("x-smeg-")]:
            del got[name]  # the reason, and whatever else smeg adds of its own
        got.pop("x-delivery-count", None)  # the quorum queue's
        if got != sent:
            problems.append(f"headers not copied: sent {_preview(sent, 200)}, got {_preview(got, 200)}")
    return problems


def _check_delivered(entry: _Entry, message: Any) -> list[str]:
    fields = entry.judgement.fields or {}
    expected = {
        "channel": fields.get("channel"),
        "to": fields.get("to"),
        "body": fields.get("body"),
        "sender": fields.get("from"),
        "provider": fields.get("provider"),
        "metadata": fields.get("metadata") or {},
    }
    correlation = fields.get("correlation_id") or as_received(entry.payload.properties.correlation_id)
    if isinstance(correlation, str) and correlation:
        expected["correlation_id"] = correlation
    wrong = {
        name: getattr(message, name, None)
        for name, value in expected.items()
        if getattr(message, name, None) != value
    }
    if wrong:
        return [f"delivered with other content {_preview(wrong, 300)}: {entry.payload!r}"]
    return []


def category(problem: str) -> str:
    """A problem's kind, for counting: its first words, and for a crash what smeg died of."""
    if problem.startswith("smeg exited with"):
        head = "smeg died: " + problem.split("(", 1)[1].split(") with", 1)[0]
    else:
        head = re.split(r": Payload\(|: \d+ bytes|:\n| \(['{]| on Payload|: sent ", problem, maxsplit=1)[0]
    head = re.sub(r"'fz[0-9a-f]{8}-[^']*'", "ID", head)
    head = re.sub(r"U\+[0-9A-F]{4}", "U+XXXX", head.replace("UTF-8", "UTF~"))
    return re.sub(r"\d+", "N", head).replace("UTF~", "UTF-8")[:140]


def describe(problems: Sequence[str], limit: int = 12) -> str:
    """The first problems, one paragraph each, and how many more there were."""
    shown = "\n\n".join(p if len(p) < 4000 else p[:4000] + "…" for p in problems[:limit])
    more = len(problems) - limit
    return shown + (f"\n\n… and {more} more" if more > 0 else "")


def figures(totals: Totals, wall: float, exit_code: int | None) -> Iterator[str]:
    """The lines a run prints."""
    yield f"payloads published   {totals.published:>9,}  ({totals.bytes / 1e6:,.1f} MB)"
    yield f"  expected valid     {totals.valid:>9,}"
    yield f"  expected invalid   {totals.invalid:>9,}"
    yield f"  left out (unclear) {totals.unsure:>9,}"
    untracked = f"  (+{totals.untracked:,} without a message_id: not rejected)" if totals.untracked else ""
    yield f"valid delivered      {totals.delivered:>9,}{untracked}"
    yield f"invalid rejected     {totals.rejected:>9,}"
    yield f"mismatches           {totals.mismatches:>9,}"
    yield f"smeg restarts        {totals.crashes:>9,}  (after it died on a batch)"
    yield f"rate                 {totals.published / wall if wall else 0:>9,.0f} payloads/s"
    yield f"wall time            {wall:>9,.1f} s"
    yield f"smeg exit status     {exit_code!s:>9}  (SIGTERM at the end; 0 expected)"
    kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(totals.kinds.items(), key=lambda kv: -kv[1]))
    yield f"kinds: {kinds}"
    if totals.errors_logged:
        yield "smeg's error lines: " + ", ".join(f"{k} {n:,}" for k, n in totals.errors_logged.most_common())


def run_clock() -> Callable[[], float]:
    """Seconds since the call (a monotonic clock for wall figures)."""
    started = time.monotonic()
    return lambda: time.monotonic() - started
