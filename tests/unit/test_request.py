"""The send request at the edge: parse_send_request's rules and mask_address."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from domain.errors import InvalidRequestError
from domain.request import SendRequest, mask_address, parse_send_request


def raw(**fields: Any) -> bytes:
    request: dict[str, Any] = {
        "message_id": "order-42",
        "channel": "sms",
        "to": "+441234560123",
        "body": "Your code is 123456",
    }
    request.update(fields)
    return json.dumps({k: v for k, v in request.items() if v is not ...}).encode()


def assert_refused(data: bytes, message: str, **kwargs: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        parse_send_request(data, **kwargs)
    text = str(caught.value)
    assert text == message
    assert "\n" not in text
    return caught.value


# --- valid requests -------------------------------------------------------------------------


def test_a_valid_sms_request_is_parsed_with_every_field():
    request = parse_send_request(
        raw(
            correlation_id="corr-1",
            provider="alpha",
            metadata={"campaign": "spring"},
            **{"from": "ACME"},
        )
    )

    assert request == SendRequest(
        message_id="order-42",
        channel="sms",
        to="+441234560123",
        body="Your code is 123456",
        correlation_id="corr-1",
        sender="ACME",
        provider="alpha",
        metadata={"campaign": "spring"},
    )


def test_a_valid_im_request_accepts_a_handle_as_recipient():
    request = parse_send_request(raw(channel="im", to="@alice:example.org", body="hi"))

    assert (request.channel, request.to, request.body) == ("im", "@alice:example.org", "hi")


def test_optional_fields_default_to_none_and_empty_metadata():
    request = parse_send_request(raw(correlation_id="c"))

    assert (request.sender, request.provider, request.metadata) == (None, None, {})


def test_a_missing_message_id_is_generated():
    request = parse_send_request(raw(message_id=...))

    assert re.fullmatch(r"[0-9a-f]{32}", request.message_id)


def test_generated_message_ids_differ_per_request():
    ids = {parse_send_request(raw(message_id=...)).message_id for _ in range(100)}

    assert len(ids) == 100


def test_a_missing_correlation_id_is_generated():
    request = parse_send_request(raw())

    assert re.fullmatch(r"[0-9a-f]{32}", request.correlation_id)
    assert request.correlation_id != parse_send_request(raw()).correlation_id


def test_a_missing_correlation_id_falls_back_to_the_amqp_correlation_id():
    request = parse_send_request(raw(), correlation_id="amqp-corr-7")

    assert request.correlation_id == "amqp-corr-7"


def test_the_bodys_correlation_id_wins_over_the_amqp_one():
    request = parse_send_request(raw(correlation_id="body-corr"), correlation_id="amqp-corr")

    assert request.correlation_id == "body-corr"


def test_an_empty_amqp_correlation_id_is_ignored_and_one_is_generated():
    request = parse_send_request(raw(), correlation_id="")

    assert re.fullmatch(r"[0-9a-f]{32}", request.correlation_id)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("body", "x" * 1600),
        ("body", "é"),
        ("message_id", "a" * 128),
        ("message_id", "A.b_c:d-9"),
        ("to", "+1234567"),
        ("to", "+123456789012345"),
        ("correlation_id", "c" * 128),
    ],
)
def test_values_at_the_limits_are_accepted(field, value):
    assert getattr(parse_send_request(raw(**{field: value})), field) == value


def test_an_im_recipient_of_256_chars_is_accepted():
    assert len(parse_send_request(raw(channel="im", to="u" * 256)).to) == 256


def test_metadata_of_exactly_4_kib_is_accepted():
    # Given {"k": "xxx…"} serialised to exactly 4096 bytes
    metadata = {"k": "x" * (4096 - len('{"k": ""}'))}
    assert len(json.dumps(metadata).encode()) == 4096

    # When / Then
    assert parse_send_request(raw(metadata=metadata)).metadata == metadata


def test_raw_utf8_bodies_are_accepted():
    data = '{"channel": "im", "to": "bob", "body": "Grüße 👋 你好"}'.encode()

    request = parse_send_request(data)

    assert request.body == "Grüße 👋 你好"


# --- rejections -----------------------------------------------------------------------------


def test_invalid_json_is_refused():
    error = assert_refused(b'{"channel": ', "body is not JSON: Expecting value")

    assert error.__cause__ is None
    assert error.__suppress_context__


def test_a_json_array_is_refused_as_not_an_object():
    assert_refused(b"[1, 2]", "body is not a JSON object")


def test_a_json_string_is_refused_as_not_an_object():
    assert_refused(b'"hello"', "body is not a JSON object")


def test_bytes_that_are_not_utf8_are_refused():
    assert_refused(b'{"body": "\xff\xfe"}', "body is not valid UTF-8")


def test_an_unknown_field_is_refused_by_name():
    assert_refused(raw(priority="high"), "unknown field: priority")


def test_the_first_unknown_field_in_alphabetical_order_is_named():
    assert_refused(raw(zeta=1, alpha=2), "unknown field: alpha")


@pytest.mark.parametrize("channel", ["email", "SMS", "", None, 1, ...])
def test_a_channel_other_than_sms_or_im_is_refused(channel):
    assert_refused(raw(channel=channel), "channel must be 'sms' or 'im'")


@pytest.mark.parametrize(
    "to",
    ["441234560123", "+0441234560", "+123456", "+1234567890123456", "+44 1234 560123", "+44abc1234"],
)
def test_an_sms_recipient_that_is_not_e164_is_refused(to):
    assert_refused(raw(to=to), "to must be an E.164 number for sms")


@pytest.mark.parametrize("to", [None, 441234560123, ["+441234560123"]])
def test_a_recipient_that_is_not_a_string_is_refused(to):
    assert_refused(raw(to=to), "to must be a string")


def test_an_im_recipient_of_257_chars_is_refused():
    assert_refused(raw(channel="im", to="u" * 257), "to must be 1-256 bytes for im")


def test_an_empty_im_recipient_is_refused():
    assert_refused(raw(channel="im", to=""), "to must be 1-256 bytes for im")


@pytest.mark.parametrize("body", ["", "x" * 1601, None, 42], ids=["empty", "1601", "null", "int"])
def test_a_body_that_is_empty_too_long_or_not_a_string_is_refused(body):
    assert_refused(raw(body=body), "body must be a string of 1-1600 chars")


@pytest.mark.parametrize(
    "message_id",
    ["has space", "semi;colon", "slash/", "ünï", "", "a" * 129, 42],
    ids=["space", "semicolon", "slash", "non-ascii", "empty", "129", "int"],
)
def test_a_message_id_with_bad_chars_or_length_is_refused(message_id):
    assert_refused(raw(message_id=message_id), "message_id must be 1-128 chars of [A-Za-z0-9._:-]")


def test_a_message_id_with_a_trailing_newline_is_refused():
    """``$`` also matches before a final newline, so a bare ``re.match`` lets one through."""
    assert_refused(raw(message_id="order-42\n"), "message_id must be 1-128 chars of [A-Za-z0-9._:-]")


def test_an_sms_recipient_with_a_trailing_newline_is_refused():
    assert_refused(raw(to="+441234560123\n"), "to must be an E.164 number for sms")


@pytest.mark.parametrize(
    "metadata",
    [{"n": 1}, {"flag": True}, {"nested": {"a": "b"}}, {"none": None}, ["a"], "text"],
    ids=["int", "bool", "object", "null", "array", "string"],
)
def test_metadata_that_is_not_an_object_of_strings_is_refused(metadata):
    assert_refused(raw(metadata=metadata), "metadata must be an object of strings")


def test_metadata_over_4_kib_is_refused():
    metadata = {"k": "x" * (4097 - len('{"k": ""}'))}

    assert_refused(raw(metadata=metadata), "metadata must be at most 4096 bytes")


def test_metadata_size_counts_utf8_bytes_not_characters():
    # 1400 "€" are 1400 characters but 4200 bytes
    assert_refused(raw(metadata={"k": "€" * 1400}), "metadata must be at most 4096 bytes")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("from", "", "from must be a string of 1-256 bytes"),
        ("from", "s" * 257, "from must be a string of 1-256 bytes"),
        ("from", 7, "from must be a string of 1-256 bytes"),
        ("provider", "p" * 65, "provider must be a string of 1-64 bytes"),
        ("correlation_id", "c" * 129, "correlation_id must be a string of 1-128 bytes"),
        ("correlation_id", 5, "correlation_id must be a string of 1-128 bytes"),
    ],
)
def test_optional_fields_out_of_bounds_are_refused(field, value, message):
    assert_refused(raw(**{field: value}), message)


def test_metadata_with_an_unencodable_lone_surrogate_is_refused_as_invalid():
    """JSON may escape a lone surrogate (\\ud800), which no UTF-8 encoder accepts."""
    data = b'{"channel": "im", "to": "bob", "body": "x", "metadata": {"k": "\\ud800"}}'

    with pytest.raises(InvalidRequestError):
        parse_send_request(data)


def test_a_body_with_an_unencodable_lone_surrogate_is_refused_as_invalid():
    """An accepted request must serialise again (failed queue, event store)."""
    data = b'{"channel": "im", "to": "bob", "body": "\\ud800"}'

    with pytest.raises(InvalidRequestError):
        parse_send_request(data)


@given(
    text=st.text(st.characters(blacklist_categories=("Cc",)), min_size=1, max_size=50),
    ascii_only=st.booleans(),
)
@example(text="\ud83d\ude00", ascii_only=True)
@example(text="\ud800", ascii_only=True)
@example(text="a\\ud800", ascii_only=False)
def test_a_body_is_accepted_exactly_when_it_encodes_as_utf8_however_it_is_escaped(text, ascii_only):
    """Escaped (``\\uXXXX``) or literal, a body parses iff it would serialise again."""
    data = json.dumps({"channel": "im", "to": "bob", "body": text}, ensure_ascii=ascii_only)
    try:
        raw_bytes = data.encode("utf-8")
    except UnicodeEncodeError:
        return  # a literal lone surrogate cannot even be sent as UTF-8
    decoded = json.loads(data)["body"]  # an escaped surrogate pair decodes to one character
    try:
        decoded.encode("utf-8")
        encodable = True
    except UnicodeEncodeError:
        encodable = False

    if encodable:
        assert parse_send_request(raw_bytes).body == decoded
    else:
        with pytest.raises(InvalidRequestError):
            parse_send_request(raw_bytes)


# --- round trip -----------------------------------------------------------------------------


def test_to_json_round_trips_through_parse_send_request():
    # Given
    original = parse_send_request(
        raw(correlation_id="c-1", provider="beta", metadata={"a": "b"}, **{"from": "ACME"})
    )

    # When
    again = parse_send_request(original.to_json())

    # Then
    assert again == original


def test_to_json_omits_absent_optional_fields():
    data = json.loads(parse_send_request(raw(correlation_id="c")).to_json())

    assert set(data) == {"message_id", "channel", "to", "body", "correlation_id"}


def test_to_json_keeps_non_ascii_text_as_utf8():
    request = parse_send_request(raw(body="Grüße"))

    assert "Grüße".encode() in request.to_json()


message_ids = st.from_regex(r"\A[A-Za-z0-9._:-]{1,128}\Z")
#: Printable text of at most 64 bytes: what ids, addresses and metadata keys may hold.
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=16)
requests = st.fixed_dictionaries(
    {
        "message_id": message_ids,
        "body": st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=1600),
        "correlation_id": st.text(
            min_size=1, max_size=32, alphabet=st.characters(blacklist_categories=("Cs", "Cc"))
        ),
    },
    optional={
        "from": texts,
        "provider": texts,
        "metadata": st.dictionaries(texts, texts, max_size=5),
    },
).flatmap(
    lambda base: st.one_of(
        st.just({**base, "channel": "sms"}).flatmap(
            lambda d: st.from_regex(r"\A\+[1-9][0-9]{6,14}\Z").map(lambda to: {**d, "to": to})
        ),
        st.just({**base, "channel": "im"}).flatmap(lambda d: texts.map(lambda to: {**d, "to": to})),
    )
)


@given(fields=requests)
def test_any_valid_request_round_trips_through_to_json(fields):
    original = parse_send_request(json.dumps(fields).encode())

    assert parse_send_request(original.to_json()) == original


@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_are_either_parsed_or_refused_with_invalid_request_error(data):
    try:
        request = parse_send_request(data)
    except InvalidRequestError as error:
        assert "\n" not in str(error)
    else:
        assert isinstance(request, SendRequest)


@given(
    fields=st.dictionaries(
        st.sampled_from(["channel", "to", "body", "metadata", "from"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=8,
        ),
    )
)
def test_arbitrary_json_objects_are_either_parsed_or_refused_with_invalid_request_error(fields):
    data = json.dumps(fields).encode()

    try:
        request = parse_send_request(data)
    except InvalidRequestError as error:
        assert "\n" not in str(error)
    else:
        assert request.to_json()


# --- mask_address ---------------------------------------------------------------------------


def test_a_phone_number_shows_only_its_last_four_digits():
    assert mask_address("+441234560123") == "*********0123"


def test_an_im_handle_shows_only_its_last_four_chars():
    assert mask_address("alice@example.org") == "*************.org"


def test_a_short_number_keeps_at_least_four_characters_hidden():
    assert mask_address("+1234567") == "****4567"
    assert mask_address("+123456") == "****456"


@pytest.mark.parametrize("value", ["", "a", "+441", "abcd"])
def test_an_address_of_four_chars_or_fewer_is_masked_entirely(value):
    assert mask_address(value) == "*" * len(value)


@given(value=st.text(alphabet=st.characters(blacklist_characters="*"), max_size=300))
def test_a_masked_address_shows_at_most_the_last_four_and_hides_at_least_four(value):
    masked = mask_address(value)

    assert len(masked) == len(value)
    revealed = [i for i, ch in enumerate(masked) if ch != "*"]
    assert all(i >= len(value) - 4 for i in revealed)
    assert masked.count("*") >= min(4, len(value))
    assert masked[len(masked) - len(revealed) :] == value[len(value) - len(revealed) :]


# --- the strict decoder the consumer passes -------------------------------------------------


def verdict(data: bytes, **kwargs: Any) -> tuple[str, Any]:
    """What parsing ``data`` ends in: the request (a generated message id blanked) or the error."""
    try:
        request = parse_send_request(data, correlation_id="amqp-corr", **kwargs)
    except InvalidRequestError as error:
        return "refused", str(error)
    generated = b'"message_id"' not in data
    return "parsed", dataclasses.replace(request, message_id="") if generated else request


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(categories=["Cs", "Lu", "Ll", "Nd", "Zs", "So"]), max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@given(
    data=st.one_of(
        st.binary(max_size=200),
        requests.map(lambda fields: json.dumps(fields).encode()),
        requests.map(lambda fields: json.dumps(fields, ensure_ascii=False).encode("utf-8", "surrogatepass")),
        st.dictionaries(
            st.sampled_from(["message_id", "channel", "to", "body", "metadata", "from", "other"]), json_values
        ).map(lambda fields: json.dumps(fields).encode()),
    )
)
@example(data=b'{"channel": "im", "to": "bob", "body": "\\ud800"}')
@example(data=b'{"channel": "im", "to": "bob", "body": "x", "metadata": {"a": NaN}}')
@example(data=b'{"channel": "im", "to": "bob", "body": "x", "from": 123456789012345678901234567890}')
@example(data=b"\xef\xbb\xbf{}")
@example(data=b"null")
def test_orjson_as_the_strict_decoder_changes_no_verdict_and_no_error_message(data: bytes) -> None:
    assert verdict(data, strict_loads=orjson.loads) == verdict(data)


def test_a_request_without_ids_gets_fresh_32_hex_digit_ones() -> None:
    first = parse_send_request(raw(message_id=...))
    second = parse_send_request(raw(message_id=...))
    for request in (first, second):
        assert re.fullmatch(r"[0-9a-f]{32}", request.message_id)
        assert re.fullmatch(r"[0-9a-f]{32}", request.correlation_id)
    assert len({first.message_id, first.correlation_id, second.message_id, second.correlation_id}) == 4
