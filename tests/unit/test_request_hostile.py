"""Hostile requests at the edge: size and depth bounded before decoding, limits in UTF-8 bytes,
no control characters where they cannot travel, and reasons that stay one short line."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import InvalidRequestError
from domain.request import MAX_DEPTH, MAX_REQUEST_BYTES, parse_send_request


def raw(**fields: Any) -> bytes:
    request: dict[str, Any] = {"message_id": "m-1", "channel": "sms", "to": "+441234560123", "body": "hi"}
    request.update(fields)
    return json.dumps(request, ensure_ascii=False).encode()


def refusal(data: bytes, **kwargs: Any) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        parse_send_request(data, **kwargs)
    return str(caught.value)


@pytest.mark.parametrize("loads", [None, orjson.loads])
def test_brackets_nested_1100_deep_are_refused_without_recursion(loads):
    assert (
        refusal(b"[" * 1100 + b"]" * 1100, strict_loads=loads) == f"body nests deeper than {MAX_DEPTH} levels"
    )


@pytest.mark.parametrize("loads", [None, orjson.loads])
def test_ten_thousand_open_brackets_are_refused(loads):
    assert "nests deeper" in refusal(b'{"a":' * 10_000, strict_loads=loads)


def test_brackets_inside_strings_do_not_count_as_depth():
    body = "[" * 500 + "{" * 500
    assert parse_send_request(raw(body=body), strict_loads=orjson.loads).body == body
    assert parse_send_request(raw(body=body)).body == body


@pytest.mark.parametrize("loads", [None, orjson.loads])
def test_an_integer_of_5000_digits_is_refused_as_a_wrong_type(loads):
    data = b'{"channel": "sms", "to": "+441234560123", "body": ' + b"9" * 5000 + b"}"
    assert refusal(data, strict_loads=loads) == "body must be a string of 1-1600 chars"


def test_a_huge_integer_in_an_unknown_place_is_refused_by_the_field_name():
    data = b'{"zzz": ' + b"1" * 10_000 + b"}"
    assert refusal(data) == "unknown field: zzz"


def test_a_body_larger_than_the_bound_is_refused_unread():
    data = b'{"body": "' + b"a" * MAX_REQUEST_BYTES + b'"}'
    assert refusal(data) == f"body is larger than {MAX_REQUEST_BYTES} bytes"


def test_an_unknown_field_of_130_kb_is_named_in_at_most_a_short_excerpt():
    name = "k" * 30_000
    reason = refusal(json.dumps({name: 1}).encode())
    assert reason == "unknown field: " + "k" * 64 + "…"


def test_control_characters_in_an_unknown_field_name_are_escaped_in_the_reason():
    assert refusal(json.dumps({"a\x00\nb": 1}).encode()) == "unknown field: a\\x00\\x0ab"


def test_correlation_id_counts_utf8_bytes_not_characters():
    assert parse_send_request(raw(correlation_id="€" * 42)).correlation_id == "€" * 42
    assert refusal(raw(correlation_id="€" * 43)) == "correlation_id must be a string of 1-128 bytes"
    assert refusal(raw(correlation_id="€" * 128)) == "correlation_id must be a string of 1-128 bytes"


def test_an_im_address_counts_utf8_bytes():
    assert parse_send_request(raw(channel="im", to="é" * 128)).to == "é" * 128
    assert refusal(raw(channel="im", to="é" * 129)) == "to must be 1-256 bytes for im"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("correlation_id", "a\x00b", "correlation_id must not contain control characters"),
        ("correlation_id", "a\nb", "correlation_id must not contain control characters"),
        ("from", "x\x00", "from must not contain control characters"),
        ("from", "x\x85", "from must not contain control characters"),
        ("provider", "p\x7f", "provider must not contain control characters"),
        ("body", "a\x00b", "body must not contain control characters other than tab and newlines"),
        ("body", "a\x1bb", "body must not contain control characters other than tab and newlines"),
    ],
)
def test_control_characters_are_refused_where_they_cannot_travel(field, value, reason):
    assert refusal(raw(**{field: value})) == reason


def test_an_im_address_with_a_nul_is_refused():
    assert refusal(raw(channel="im", to="bob\x00")) == "to must not contain control characters"


def test_body_and_metadata_values_may_hold_tabs_and_newlines():
    request = parse_send_request(raw(body="line 1\r\nline\t2", metadata={"note": "a\nb\tc"}))
    assert request.body == "line 1\r\nline\t2"
    assert request.metadata == {"note": "a\nb\tc"}


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"k": "v\x00"}, "metadata values must not contain control characters other than tab and newlines"),
        ({"k\n": "v"}, "metadata keys must be 1-64 bytes without control characters"),
        ({"": "v"}, "metadata keys must be 1-64 bytes without control characters"),
        ({"k" * 65: "v"}, "metadata keys must be 1-64 bytes without control characters"),
    ],
)
def test_metadata_keys_and_values_are_checked(metadata, reason):
    assert refusal(raw(metadata=metadata)) == reason


def test_the_amqp_correlation_id_passes_the_same_rules():
    assert refusal(raw(), correlation_id="a\x00") == "correlation_id must not contain control characters"
    assert refusal(raw(), correlation_id=b"\xff") == "correlation_id must be a string of 1-128 bytes"


@given(data=st.binary(max_size=2000))
def test_no_byte_string_raises_anything_but_invalid_request_error(data):
    for loads in (None, orjson.loads):
        try:
            parse_send_request(data, strict_loads=loads)
        except InvalidRequestError as error:
            assert "\n" not in str(error)
            assert len(str(error).encode()) <= 512


@given(
    prefix=st.text(alphabet='[{"\\:,a1 ', max_size=300),
    depth=st.integers(min_value=0, max_value=3000),
)
def test_any_mix_of_brackets_and_strings_is_refused_or_parsed_never_raised(prefix, depth):
    data = (prefix + "[" * depth + "]" * depth).encode()
    for loads in (None, orjson.loads):
        try:
            parse_send_request(data, strict_loads=loads)
        except InvalidRequestError:
            pass
