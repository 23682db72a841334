"""``one_line_text``: what a person types to be recorded (a reason, a name), the same rule at
every edge (CLI options, the admin API, the console)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.request import CONTROL_RE, MAX_REASON, one_line_text


@pytest.mark.parametrize(
    "value",
    [
        None,
        3,
        "",
        "   ",
        "a" * (MAX_REASON + 1),
        "a\nb",
        "a\rb",
        "red \x1b[31m",
        "tab\there",
        "\x85",
        "\ud800",
    ],
)
def test_what_is_not_one_line_of_text_is_refused_without_echoing_it(value: object) -> None:
    with pytest.raises(ValueError) as refused:
        one_line_text(value)
    assert str(refused.value) in (
        f"must be 1-{MAX_REASON} characters",
        "must be one line of text, without control characters",
    )


@given(st.text(max_size=300))
def test_anything_accepted_is_stripped_one_line_bounded_and_encodable(value: str) -> None:
    try:
        text = one_line_text(value)
    except ValueError:
        return
    assert text == value.strip() and 1 <= len(text) <= MAX_REASON
    assert not CONTROL_RE.search(text)
    text.encode("utf-8")


def test_a_reason_in_plain_words_is_kept_as_typed_less_the_outer_spaces() -> None:
    assert (
        one_line_text("  gateway fixed — retry all (ticket #42)  ")
        == "gateway fixed — retry all (ticket #42)"
    )
    assert one_line_text("x" * 64, 64) == "x" * 64
