"""Logging set-up, in one place: structlog JSON lines on stderr (console renderer on a TTY).

pika's and pykka's standard-library logs go through the same processors. Phone numbers are
masked by callers (``mask_address``); bodies are never logged.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import structlog


def configure_logging(*, fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog and the stdlib root logger to render the same way."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor
    if use_json:
        shared.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # drop below-level calls before any processing
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processor=renderer))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # smeg reports broker failures itself
    logging.getLogger("httpx").setLevel(logging.WARNING)


@contextmanager
def message_context(message_id: str, correlation_id: str) -> Iterator[None]:
    """Bind a message's ids to every log line written while it is handled."""
    with structlog.contextvars.bound_contextvars(message_id=message_id, correlation_id=correlation_id):
        yield
