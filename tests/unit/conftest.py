"""Unit-tier fixtures: no actor and no logging configuration outlives its test (style rules 26, 28)."""

from __future__ import annotations

from collections.abc import Iterator

import pykka
import pytest
import structlog


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    """Every actor a test started is stopped at teardown, even when the test failed."""
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=10)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()
