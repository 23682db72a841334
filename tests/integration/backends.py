"""Databases behind MessageStore tests: a SQLite file or a PostgreSQL schema, each breakable."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from adapters.event_store import MessageStore


def psycopg_conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class Backend:
    """One database behind the stores of a test, with a way to make its inserts fail."""

    name: str
    url: str
    schema: str = ""
    stores: list[MessageStore] = field(default_factory=list)

    def open(self) -> MessageStore:
        """Another MessageStore (another writer) on the same database."""
        store = MessageStore(self.url, schema=self.schema)
        self.stores.append(store)
        return store

    def close(self) -> None:
        for store in self.stores:
            store.close()

    def break_inserts(self) -> None:
        """Every insert of an event fails from now on (a trigger; the table stays readable)."""
        if self.name == "sqlite":
            self._sqlite(
                "CREATE TRIGGER smeg_test_fail BEFORE INSERT ON stored_events "
                "BEGIN INSERT INTO smeg_test_missing_table VALUES (1); END"
            )
        else:
            self._postgres(
                "CREATE FUNCTION {schema}.smeg_test_fail() RETURNS trigger LANGUAGE plpgsql "
                "AS $$ BEGIN RAISE EXCEPTION 'injected insert failure'; END $$",
                "CREATE TRIGGER smeg_test_fail BEFORE INSERT ON {schema}.messages_events "
                "FOR EACH ROW EXECUTE FUNCTION {schema}.smeg_test_fail()",
            )

    def heal_inserts(self) -> None:
        if self.name == "sqlite":
            self._sqlite("DROP TRIGGER smeg_test_fail")
        else:
            self._postgres("DROP TRIGGER smeg_test_fail ON {schema}.messages_events")

    def drop_events_table(self) -> None:
        if self.name == "sqlite":
            self._sqlite("DROP TABLE stored_events")
        else:
            self._postgres("DROP TABLE {schema}.messages_events")

    def _sqlite(self, statement: str) -> None:
        connection = sqlite3.connect(make_url(self.url).database, isolation_level=None)
        try:
            connection.execute(statement)
        finally:
            connection.close()

    def _postgres(self, *statements: str) -> None:
        with psycopg.connect(psycopg_conninfo(self.url), autocommit=True) as connection:
            for statement in statements:
                connection.execute(
                    sql.SQL(statement).format(schema=sql.Identifier(self.schema))  # type: ignore[arg-type]
                )
