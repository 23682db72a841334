"""What the CLI's commands share: one-line errors with exit codes, settings, the store, timestamps,
progress lines.

Cheap to import (click and the standard library): every command, ``smeg --help`` included, imports
it; what a command needs beyond that it imports when it runs.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import click

from smeg_actors.runtime.exit_codes import EXIT_CONFIG, EXIT_REFUSED, EXIT_UNHEALTHY

if TYPE_CHECKING:
    from adapters.event_store import MessageStore
    from smeg_actors.runtime.config import Settings


class CommandError(Exception):
    """A one-line failure with its exit code."""

    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


def settings_of(ctx: click.Context) -> Settings:
    from smeg_actors.runtime.config import Settings

    settings = ctx.obj["settings"]
    assert isinstance(settings, Settings)
    return settings


def open_store(settings: Settings, *, must_exist: bool = True) -> MessageStore:
    """The event store, or a CommandError (exit 3) saying why it cannot be opened.

    A command that reads what is recorded (or acts on it) must not create an empty SQLite store
    where a mistyped path points and then report nothing: that the file is missing is the error.
    """
    from domain.ports import StoreError
    from smeg_actors.runtime.factory import open_store as open_configured_store

    if must_exist:
        _check_sqlite_file(settings.database_url)
    try:
        return open_configured_store(settings)
    except StoreError as exc:
        raise CommandError(f"event store unavailable: {exc}", EXIT_UNHEALTHY) from None


def _check_sqlite_file(url: str) -> None:
    from adapters.store_connection import sqlite_database

    path = sqlite_database(url)
    if path is None and url.startswith("sqlite"):  # with a query string: SQLAlchemy reads it
        from sqlalchemy.engine import make_url

        path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    if not Path(path).exists():
        raise CommandError(
            f"no event store at {path} (SMEG_DATABASE_URL): nothing has been recorded there", EXIT_UNHEALTHY
        )


def parse_time(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 timestamp (naive means UTC), or a CommandError naming the option."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{option}: not an ISO 8601 timestamp: {value!r}", EXIT_CONFIG) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def quiet_stdout() -> None:
    """The reader went away (``| head``): that is not an error; stop writing quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def progress(text: str) -> None:
    """Redraw the progress line on stderr, only when stderr is a terminal: in a pipe, a file or
    a log collector a line redrawn in place is noise, and only the results are wanted."""
    if _stderr_is_terminal():
        click.echo(f"\r{text}", nl=False, err=True)


def end_progress() -> None:
    """End the progress line (on a terminal; elsewhere none was drawn)."""
    if _stderr_is_terminal():
        click.echo("", err=True)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # None, or closed
        return False


#: The longest ``--reason`` and ``--by`` recorded: they travel in every held message's history.
MAX_REASON, MAX_BY = 200, 64  # (domain.request.MAX_REASON)


def one_line(limit: int) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """A click callback: ``domain.request.one_line_text`` of the value, or a usage error."""

    def check(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
        from domain.request import one_line_text

        if value is None:
            return None
        try:
            return one_line_text(value, limit)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return check


def operator() -> str:
    """The OS user's name: who a CLI change is recorded as (``cli:NAME``)."""
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without a passwd entry)
        return "unknown"
