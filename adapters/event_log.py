"""Reading the event log fast: raw rows from the recorder's table, decoded with orjson.

The read models, the events exchange and a rebuild read every event of the log. Through
eventsourcing's ``select_notifications`` and ``Mapper.to_domain_event`` that costs about 35 µs an
event here (row objects, a UUID conversion, ``json`` with a Python ``object_hook``, topic and id
convertor lookups), more than the read models themselves. ``LogReader`` selects the same columns
as the recorder, parses with orjson, revives the transcoder's custom types with the application's
own registered transcodings, and builds the same event objects the Mapper builds (its tests check
event for event). Anything it does not handle — a cipher or a compressor, an upcast, bytes orjson
refuses — goes through the library's Mapper instead.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import orjson
from eventsourcing.application import Application
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import JSONTranscoder, Mapper, StoredEvent
from eventsourcing.utils import resolve_topic

#: (position, event) in store order.
LogEntry = tuple[int, DomainEvent]

#: (index, count): only the events of originators whose id's last hex digit % count == index.
Partition = tuple[int, int]


def in_partition(originator_id: UUID, partition: Partition) -> bool:
    """Whether ``originator_id`` belongs to ``partition`` (the rule the SQL filters apply)."""
    index, count = partition
    return originator_id.int % 16 % count == index


class FastJSONTranscoder(JSONTranscoder):
    """eventsourcing's JSON format, written and read with orjson (same documents, same objects).

    Decoding parses with orjson, then revives every ``{"_type_": name, "_data_": data}`` object
    with the transcoding registered under ``name``, innermost first, exactly as the library's
    ``object_hook`` does. Encoding uses orjson when the state holds only JSON's own types and
    plain datetimes (every Message event does): orjson hands each datetime to the library's
    ``_encode_obj``, which writes it as the library would. Anything else — a UUID or an enum,
    which orjson would write its own way, a subclass, a non-finite float, an integer beyond 64
    bits — is encoded by the library. The bytes could differ from the library's only in how a
    float is spelt; they decode to the same values (tested).
    """

    def encode(self, obj: Any) -> bytes:
        if _plain(obj):
            try:
                return orjson.dumps(obj, default=self._encode_obj, option=_PASSTHROUGH)
            except orjson.JSONEncodeError:
                pass
        return super().encode(obj)

    def decode(self, data: bytes) -> Any:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            return super().decode(data)
        return self._revive(value) if b'"_type_"' in data else value

    def _revive(self, value: Any) -> Any:
        kind = type(value)
        if kind is dict:
            for key, item in value.items():
                if type(item) is dict or type(item) is list:
                    value[key] = self._revive(item)
            if len(value) == 2 and "_type_" in value and "_data_" in value:
                return self._decode_obj(value)
            return value
        if kind is list:
            return [self._revive(item) for item in value]
        return value


_PASSTHROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS
_SCALARS = frozenset((str, int, bool, type(None), datetime))


def _plain(value: Any) -> bool:
    """Only JSON's own types (str keys) and plain datetimes, so orjson writes what the library writes."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        return all(type(key) is str and _plain(item) for key, item in value.items())
    if kind is list:
        return all(_plain(item) for item in value)
    return False


class LogReader:
    """Pages of the application's event log as ``(position, event)``, decoded cheaply."""

    def __init__(self, app: Application[UUID]) -> None:
        self.app = app
        recorder: Any = app.recorder
        mapper = app.mapper
        self.transcoder = mapper.transcoder
        self.module = type(recorder).__module__
        self.raw = (
            mapper.cipher is None
            and mapper.compressor is None
            and type(mapper).to_domain_event is Mapper.to_domain_event
            and self.module in ("eventsourcing.sqlite", "eventsourcing.postgres")
        )
        self.recorder = recorder
        self.classes: dict[str, type[DomainEvent]] = {}

    def read(
        self,
        after: int,
        limit: int,
        *,
        until: int | None = None,
        partition: Partition | None = None,
        topic: str | None = None,
    ) -> tuple[list[LogEntry], int]:
        """Up to ``limit`` log rows after ``after`` (and at most ``until``).

        Returns the entries (only those ``partition`` accepts and of event ``topic``, when given)
        and the position of the last row read, so a caller can page on even when a page holds
        none of what it filters for.
        """
        if partition is None and topic is None:
            rows = self._rows(after, limit, until, None)
            return [(row[0], self._event(row)) for row in rows], rows[-1][0] if rows else after
        if partition is not None:
            index, count = partition
            if not 0 <= index < count <= 16:
                raise ValueError(f"bad partition {partition}: 0 <= index < count <= 16")
        # The last row read bounds the page: a page of the whole log, filtered in the database.
        bound = self._last_position(after, limit, until)
        if bound == after:
            return [], after
        rows = self._rows(after, limit, bound, partition, topic)
        return [(row[0], self._event(row)) for row in rows], bound

    def histories(self, ids: Collection[UUID]) -> dict[UUID, list[DomainEvent]]:
        """Every stored event of each message in ``ids``, in version order (one query per 500 ids).

        For projections that need facts from a message's earlier events (its channel, its latest
        attempt's provider) without keeping a table of their own: the history is immutable, so
        any event already in the log reads the same here as when it was applied.
        """
        found: dict[UUID, list[DomainEvent]] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), 500):
            for row in self._history_rows(unique[start : start + 500]):
                event = self._event(row)
                found.setdefault(event.originator_id, []).append(event)
        return found

    def _history_rows(self, ids: Sequence[UUID]) -> Sequence[tuple[Any, ...]]:
        recorder = self.recorder
        if self.module == "eventsourcing.sqlite":
            marks = ",".join("?" * len(ids))
            statement = (
                "SELECT rowid, originator_id, originator_version, topic, state "
                f"FROM {recorder.events_table_name} WHERE originator_id IN ({marks}) "
                "ORDER BY originator_id, originator_version"
            )
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.row_factory = None  # plain tuples, not sqlite3.Row objects
                cursor.execute(statement, [i.hex for i in ids])
                found: list[tuple[Any, ...]] = cursor.fetchall()
                return found
        if self.module == "eventsourcing.postgres":
            from psycopg.rows import tuple_row
            from psycopg.sql import SQL, Identifier

            query = SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state "
                "FROM {schema}.{table} WHERE originator_id = ANY(%s) "
                "ORDER BY originator_id, originator_version"
            ).format(
                schema=Identifier(recorder.datastore.schema), table=Identifier(recorder.events_table_name)
            )
            with (
                recorder.datastore.get_connection() as connection,
                connection.cursor(row_factory=tuple_row) as cursor,
            ):
                cursor.execute(query, [list(ids)], prepare=True)
                rows: Sequence[tuple[Any, ...]] = cursor.fetchall()
                return rows
        return [
            (0, stored.originator_id, stored.originator_version, stored.topic, stored.state)
            for originator_id in ids
            for stored in recorder.select_events(originator_id)
        ]

    def _last_position(self, after: int, limit: int, until: int | None) -> int:
        """The position of the ``limit``-th row after ``after`` (or the last one, up to ``until``)."""
        if self.module == "eventsourcing.sqlite":
            statement = (
                f"SELECT max(rowid) FROM (SELECT rowid FROM {self.recorder.events_table_name} WHERE rowid>?"
            )
            params: list[int] = [after]
            if until is not None:
                statement += " AND rowid<=?"
                params.append(until)
            statement += " ORDER BY rowid LIMIT ?)"
            with self.recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(statement, [*params, limit])
                value = cursor.fetchone()[0]
        elif self.module == "eventsourcing.postgres":
            rows = self._postgres_rows(after, limit, until, None, columns="notification_id")
            value = rows[-1][0] if rows else None
        else:
            rows = self._rows(after, limit, until, None)
            value = rows[-1][0] if rows else None
        return after if value is None else int(value)

    def _rows(
        self,
        after: int,
        limit: int,
        until: int | None,
        partition: Partition | None,
        topic: str | None = None,
    ) -> Sequence[tuple[Any, ...]]:
        recorder = self.recorder
        if self.module == "eventsourcing.sqlite":
            statement = (
                "SELECT rowid, originator_id, originator_version, topic, state "
                f"FROM {recorder.events_table_name} WHERE rowid>?"
            )
            params: list[Any] = [after]
            if until is not None:
                statement += " AND rowid<=?"
                params.append(until)
            if partition is not None:
                statement += " AND (instr('0123456789abcdef', lower(substr(originator_id, -1))) - 1) % ? = ?"
                params += [partition[1], partition[0]]
            if topic is not None:
                statement += " AND topic=?"
                params.append(topic)
            statement += " ORDER BY rowid LIMIT ?"
            params.append(limit)
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.row_factory = None  # plain tuples, not sqlite3.Row objects
                cursor.execute(statement, params)
                page: list[tuple[Any, ...]] = cursor.fetchall()
                return page
        if self.module == "eventsourcing.postgres":
            return self._postgres_rows(after, limit, until, partition, topic=topic)
        notifications = recorder.select_notifications(
            start=after, limit=limit, stop=until, inclusive_of_start=False
        )
        rows = [(n.id, n.originator_id, n.originator_version, n.topic, n.state) for n in notifications]
        if partition is not None:
            rows = [row for row in rows if in_partition(self._id(row[1]), partition)]
        if topic is not None:
            rows = [row for row in rows if row[3] == topic]
        return rows

    def _postgres_rows(
        self,
        after: int,
        limit: int,
        until: int | None,
        partition: Partition | None,
        columns: str = "notification_id, originator_id, originator_version, topic, state",
        topic: str | None = None,
    ) -> Sequence[tuple[Any, ...]]:
        from psycopg.rows import tuple_row
        from psycopg.sql import SQL, Identifier

        recorder = self.recorder
        statement = SQL("SELECT " + columns + " FROM {schema}.{table} WHERE notification_id>%s").format(
            schema=Identifier(recorder.datastore.schema), table=Identifier(recorder.events_table_name)
        )
        params: list[Any] = [after]
        if until is not None:
            statement += SQL(" AND notification_id<=%s")
            params.append(until)
        if partition is not None:
            statement += SQL(" AND get_byte(uuid_send(originator_id), 15) %% 16 %% %s = %s")
            params += [partition[1], partition[0]]
        if topic is not None:
            statement += SQL(" AND topic=%s")
            params.append(topic)
        statement += SQL(" ORDER BY notification_id LIMIT %s")
        params.append(limit)
        with (
            recorder.datastore.get_connection() as connection,
            connection.cursor(row_factory=tuple_row) as cursor,
        ):
            cursor.execute(statement, params, prepare=True)
            rows: Sequence[tuple[Any, ...]] = cursor.fetchall()
            return rows

    @staticmethod
    def _id(value: UUID | str) -> UUID:
        return value if isinstance(value, UUID) else UUID(value)

    def _event(self, row: tuple[Any, ...]) -> DomainEvent:
        _position, originator_id, version, topic, state = row
        if not self.raw:
            return self._by_mapper(row)
        cls = self.classes.get(topic)
        if cls is None:
            cls = self.classes[topic] = cast(type[DomainEvent], resolve_topic(topic))
        if isinstance(state, memoryview):
            state = bytes(state)
        event_state = self.transcoder.decode(state)
        if "class_version" in event_state or getattr(cls, "class_version", 1) != 1:
            return self._by_mapper(row)
        event_state["originator_id"] = self._id(originator_id)
        event_state["originator_version"] = version
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", event_state)
        return event

    def _by_mapper(self, row: tuple[Any, ...]) -> DomainEvent:
        _position, originator_id, version, topic, state = row
        stored = StoredEvent(
            originator_id=self._id(originator_id),
            originator_version=version,
            topic=topic,
            state=bytes(state),
        )
        return cast(DomainEvent, self.app.mapper.to_domain_event(stored))
