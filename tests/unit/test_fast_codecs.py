"""The fast paths of the read side produce exactly what the libraries they stand in for produce."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, UUIDAsHex
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import DateTime
from sqlalchemy.dialects.sqlite import pysqlite

from adapters.event_log import FastJSONTranscoder, in_partition
from adapters.sql import _bind_processor

SQLITE = pysqlite.dialect()
moments = st.datetimes(
    min_value=datetime(1000, 1, 1),
    max_value=datetime(9999, 12, 31),
    timezones=st.none()
    | st.just(timezone.utc)
    | st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-900, 900)),
)


@given(moments)
def test_sqlite_datetime_text_equals_sqlalchemys(moment: datetime) -> None:
    theirs = DateTime(timezone=True).dialect_impl(SQLITE).bind_processor(SQLITE)
    assert theirs is not None
    assert _bind_processor(DateTime(timezone=True), SQLITE)(moment) == theirs(moment)


def transcoders() -> tuple[JSONTranscoder, FastJSONTranscoder]:
    library, fast = JSONTranscoder(), FastJSONTranscoder()
    for transcoder in (library, fast):
        transcoder.register(DatetimeAsISO())
        transcoder.register(UUIDAsHex())
    return library, fast


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text() | st.floats(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
typed = st.datetimes(timezones=st.just(timezone.utc)) | st.uuids()
states = st.dictionaries(st.text(max_size=10), json_values | typed | st.lists(typed, max_size=3), max_size=8)


@given(states)
def test_fast_transcoder_decodes_what_the_library_decodes(state: dict[str, Any]) -> None:
    library, fast = transcoders()
    data = library.encode(state)
    assert fast.decode(data) == library.decode(data)


@given(states)
def test_fast_transcoder_writes_what_the_library_reads_back_the_same(state: dict[str, Any]) -> None:
    library, fast = transcoders()
    assert library.decode(fast.encode(state)) == library.decode(library.encode(state))


float_free = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=10), float_free | st.datetimes(timezones=st.just(timezone.utc))))
def test_fast_transcoder_writes_the_librarys_bytes_when_no_float_is_spelt_differently(
    state: dict[str, Any],
) -> None:
    library, fast = transcoders()
    assert fast.encode(state) == library.encode(state)


def test_fast_transcoder_leaves_what_orjson_would_write_its_own_way_to_the_library() -> None:
    library, fast = transcoders()
    for state in (
        {"id": UUID(int=7)},
        {"nested": [{"id": UUID(int=8)}]},
        {"big": 2**70},
        {"nan": float("nan")},
        {"when": datetime(2024, 1, 1, tzinfo=timezone.utc), "key": {1: "not a str key"}},
    ):
        assert fast.encode(state) == library.encode(state)


def test_fast_transcoder_revives_nested_typed_values_innermost_first() -> None:
    library, fast = transcoders()
    state = {"a": [{"b": datetime(2024, 1, 1, tzinfo=timezone.utc)}], "c": {"d": UUID(int=7)}}
    data = library.encode(state)
    assert fast.decode(data) == library.decode(data) == state


def test_fast_transcoder_falls_back_to_the_library_for_what_orjson_refuses() -> None:
    library, fast = transcoders()
    lone_surrogate = b'{"text":"\\ud800"}'
    assert fast.decode(lone_surrogate) == library.decode(lone_surrogate)


@given(st.uuids(), st.integers(1, 16))
def test_every_id_is_in_exactly_one_partition(originator_id: UUID, count: int) -> None:
    assert sum(in_partition(originator_id, (index, count)) for index in range(count)) == 1
