"""Capturing smeg's log lines in a test, rendered as the service renders them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import structlog

from smeg_actors.runtime.logs import configure_logging


@contextmanager
def captured_logs(level: str = "info", *modules: ModuleType, fmt: str = "json") -> Iterator[io.StringIO]:
    """The lines written meanwhile at ``level`` and above. Each of ``modules`` gets a fresh
    ``log``: smeg's module loggers are cached on first use, maybe under another test's set-up."""
    stream, root = io.StringIO(), logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    saved = [(module, module.log) for module in modules]
    configure_logging(fmt=fmt, level=level, stream=stream)
    for module in modules:
        module.log = structlog.get_logger(module.__name__)
    try:
        yield stream
    finally:
        for module, logger in saved:
            module.log = logger
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        root.handlers[:], root.level = handlers, root_level


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]
