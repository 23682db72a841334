"""sqlite_database reads a plain SQLite URL exactly as SQLAlchemy does (without importing it)."""

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from adapters.store_connection import sqlite_database

paths = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="?#\x00"), max_size=40)


@given(
    scheme=st.sampled_from(["sqlite", "sqlite+pysqlite"]), path=paths, slashes=st.sampled_from(["/", "//"])
)
def test_a_plain_sqlite_url_names_the_database_sqlalchemy_names(scheme: str, path: str, slashes: str) -> None:
    url = f"{scheme}://{slashes}{path}"
    ours = sqlite_database(url)
    if ours is not None:
        assert ours == (make_url(url).database or "")


def test_what_it_reads_and_what_it_leaves_to_sqlalchemy() -> None:
    assert sqlite_database("sqlite:///smeg.db") == "smeg.db"
    assert sqlite_database("sqlite:////var/lib/smeg/smeg.db") == "/var/lib/smeg/smeg.db"
    assert sqlite_database("sqlite://") == ""
    assert sqlite_database("sqlite:///:memory:") == ":memory:"
    assert sqlite_database("sqlite:///smeg.db?mode=ro") is None  # query: SQLAlchemy's to read
    assert sqlite_database("postgresql+psycopg://u@h/test") is None
    assert sqlite_database("not a url") is None


def test_percent_escapes_stay_as_written_as_sqlalchemy_keeps_them() -> None:
    for path in ("%00", "%20", "a%2Fb"):
        assert sqlite_database(f"sqlite:///{path}") == make_url(f"sqlite:///{path}").database == path
