"""Failure groups (pure): reasons without their particulars, stable ids, counts and samples; the
Archived transition and retries of archived messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import NotFailedError
from domain.failures import MAX_DETAIL, WITHHELD, group_failures, group_id, normalise_reason, provider_detail
from domain.message import ARCHIVED, FAILED, RECEIVED, Message
from domain.request import CONTROL_RE

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("timeout after 5.0s (read)", "timeout after 3s (read)"),
        ("http 400: number +447700900123 is blocked", "http 400: number +447700900999 is blocked"),
        ("number +447700900123 is blocked", "number +447700900999 is blocked"),
        (
            "id 3f2b1c4e-0000-4000-8000-000000000001 unknown",
            "id 9a9b1c4e-1111-4000-8000-000000000002 unknown",
        ),
        ("recipient 'alice' refused", 'recipient "bob" refused'),
    ],
)
def test_particulars_do_not_split_a_group(a: str, b: str) -> None:
    assert normalise_reason(a) == normalise_reason(b)


def test_different_causes_stay_apart_and_an_empty_reason_is_named() -> None:
    assert normalise_reason("blocked") != normalise_reason("unknown recipient")
    assert normalise_reason("http 400") != normalise_reason("http 404")
    assert normalise_reason(None) == normalise_reason("  ") == "(no reason)"


@given(st.text(max_size=500))
def test_a_normalised_reason_is_one_short_line_and_normalising_again_changes_nothing(reason: str) -> None:
    once = normalise_reason(reason)
    assert "\n" not in once and 0 < len(once) <= 200
    assert normalise_reason(once) == once or len(once) == 200


def test_groups_count_their_messages_largest_first_with_stable_ids() -> None:
    rows = [
        *(
            (f"b{n}", "prov-b", True, f"http 400: +4477009{n:05d} blocked", T0 + timedelta(minutes=n))
            for n in range(3)
        ),
        ("a0", "prov-a", False, "http 503", T0),
        ("n0", None, False, None, None),
    ]
    groups = group_failures(rows)
    assert [(g.provider, g.reason_class, g.count) for g in groups] == [
        ("prov-b", "permanent", 3),
        ("(none)", "exhausted", 1),
        ("prov-a", "exhausted", 1),
    ]
    blocked = groups[0]
    assert (blocked.first_failed_at, blocked.last_failed_at) == (T0, T0 + timedelta(minutes=2))
    assert blocked.sample_message_id == "b2" and blocked.message_ids == ["b0", "b1", "b2"]
    assert (
        blocked.group_id
        == group_id("prov-b", "permanent", blocked.reason)
        == group_failures(rows)[0].group_id
    )


def failed() -> Message:
    message = Message.receive(
        message_id="m", channel="sms", to="+447700900123", body="x", correlation_id="c", now=T0
    )
    message.start_attempt("a", now=T0)
    message.record_permanent_failure("http 400", error="Bad", now=T0, status_code=400)
    return message


def test_an_archived_message_is_retried_only_by_a_person_who_names_it() -> None:
    message = failed()
    message.archive("cli:alice", reason="test number", now=T0)
    assert message.status == ARCHIVED and message.is_final
    with pytest.raises(NotFailedError):
        message.request_retry("auto-redrive", now=T0)  # redrive leaves it be
    with pytest.raises(NotFailedError):
        message.archive("cli:alice", reason="again", now=T0)
    message.request_retry("cli:bob", now=T0, reason="fixed", bulk_id="b1", archived_too=True)
    assert message.status == RECEIVED
    retried = message.collect_events()[-1]
    assert (retried.requested_by, retried.reason, retried.bulk_id) == ("cli:bob", "fixed", "b1")


def test_only_a_failed_message_can_be_archived() -> None:
    message = failed()
    message.request_retry("cli:bob", now=T0)
    with pytest.raises(NotFailedError):
        message.archive("cli:alice", reason="x", now=T0)
    assert message.status != FAILED


# --- a provider's own words ---------------------------------------------------------------------


def test_a_providers_words_keep_why_and_lose_the_recipient_numbers_and_control_characters() -> None:
    to, body = "+447700900123", "Your parcel 77 arrives today"
    said = "Invalid 'To' +447700900123 (also tried 07700 900123)\n\x07retry later"
    assert provider_detail(said, to=to, body=body) == "Invalid 'To' <to> (also tried <number>) retry later"
    assert provider_detail("", to=to, body=body) is None
    assert provider_detail("   ", to=to, body=body) is None


@pytest.mark.parametrize(
    "said",
    [
        "rejected: Your parcel 77 arrives today",
        "content 'parcel 77 arrives' is blocked",  # a window of the body is enough
        "bad word in: YOUR PARCEL 77 ARRIVES TODAY".lower().replace("your", "Your"),
    ],
)
def test_words_that_quote_the_body_are_withheld(said: str) -> None:
    assert provider_detail(said, to="+447700900123", body="Your parcel 77 arrives today") == WITHHELD


def test_a_short_body_is_withheld_only_when_quoted_as_a_word() -> None:
    assert provider_detail("rejected: STOP", to="@al", body="STOP") == WITHHELD
    assert provider_detail("unstoppable gateway", to="@al", body="stop") == "unstoppable gateway"


@given(st.text(max_size=400), st.text(min_size=1, max_size=60))
def test_whatever_the_provider_says_the_reason_is_one_bounded_line_without_the_body(
    said: str, body: str
) -> None:
    detail = provider_detail(said, to="+447700900123", body=body)
    if detail is None:
        return
    assert len(detail) <= MAX_DETAIL and "\n" not in detail and not CONTROL_RE.search(detail)
    assert "+447700900123" not in detail
    flat = " ".join(body.split())
    if len(flat) >= 12:
        assert flat not in detail
