"""Log lines: smeg's own (structlog) and the standard library's render alike, as JSON on stderr."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from smeg_actors.runtime.logs import configure_logging, message_context


@pytest.fixture
def stderr() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield stream
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_of_smegs_own_carries_the_message_ids_level_logger_and_time(stderr):
    configure_logging(fmt="json", level="info", stream=stderr)
    log = structlog.get_logger("smeg_actors.actors.worker")

    with message_context("order-1", "corr-1"):
        log.info("attempt_finished", status="delivered", attempt=1)

    [line] = lines(stderr)
    assert line["event"] == "attempt_finished"
    assert (line["status"], line["attempt"]) == ("delivered", 1)
    assert (line["message_id"], line["correlation_id"]) == ("order-1", "corr-1")
    assert (line["level"], line["logger"]) == ("info", "smeg_actors.actors.worker")
    assert str(line["timestamp"]).endswith("Z")


def test_a_standard_library_line_renders_with_the_same_fields(stderr):
    configure_logging(fmt="json", level="info", stream=stderr)

    with message_context("order-2", "corr-2"):
        logging.getLogger("pykka").warning("actor %s stopped", "worker-1")

    [line] = lines(stderr)
    assert line["event"] == "actor worker-1 stopped"
    assert (line["level"], line["logger"]) == ("warning", "pykka")
    assert (line["message_id"], line["correlation_id"]) == ("order-2", "corr-2")
    assert "timestamp" in line


def test_with_a_pid_every_line_own_or_standard_library_names_its_process(stderr):
    configure_logging(fmt="json", level="info", stream=stderr, pid=4242)

    structlog.get_logger("smeg_actors.runtime.bootstrap").info("runtime_started")
    logging.getLogger("pykka").warning("actor stopped")

    assert [line.get("pid") for line in lines(stderr)] == [4242, 4242]


def test_without_a_pid_lines_carry_none(stderr):
    configure_logging(fmt="json", level="info", stream=stderr)

    structlog.get_logger("smeg_actors.runtime.bootstrap").info("runtime_started")

    [line] = lines(stderr)
    assert "pid" not in line


def test_calls_below_the_level_write_nothing(stderr):
    configure_logging(fmt="json", level="warning", stream=stderr)
    log = structlog.get_logger("smeg_actors.actors.intake")

    log.info("request_received")
    logging.getLogger("pykka").info("started")
    log.warning("request_rejected", reason="bad json")

    assert [line["event"] for line in lines(stderr)] == ["request_rejected"]


def test_an_error_with_an_exception_renders_its_traceback_as_data(stderr):
    configure_logging(fmt="json", level="info", stream=stderr)
    log = structlog.get_logger("smeg_actors.actors.supervisor")

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.error("child_crashed", exc_info=True)

    [line] = lines(stderr)
    assert line["event"] == "child_crashed"
    assert "boom" in json.dumps(line["exception"])
