"""ProjectorProcessActor's start-up handshake: the child says when it is ready, or it is not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from smeg_actors.actors.messages import AwaitReady
from smeg_actors.runtime.config import Settings
from smeg_actors.runtime.projector_process import ProjectorProcessActor

UNREACHABLE_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:1/test"


@pytest.fixture
def start_projector(amqp_url: str, prefix: str) -> Iterator[Any]:
    started: list[pykka.ActorRef[Any]] = []

    def start(database_url: str) -> pykka.ActorRef[Any]:
        settings = Settings(
            database_url=database_url, amqp_url=amqp_url, queue_prefix=prefix, log_level="warning"
        )
        ref = ProjectorProcessActor.start("projector", None, settings=settings)
        started.append(ref)
        return ref

    yield start
    for ref in started:
        ref.stop(block=True, timeout=10)


def test_the_child_says_it_is_ready_once_it_has_booted(tmp_path: Path, start_projector: Any) -> None:
    # Given
    projector = start_projector(f"sqlite:///{tmp_path}/smeg.db")

    # When / Then
    assert projector.ask(AwaitReady(30.0), timeout=35) is True
    assert (tmp_path / "smeg.read.db").exists()  # its read-model tables are in place


def test_a_child_that_cannot_boot_is_not_ready_and_is_not_waited_for(start_projector: Any) -> None:
    # Given a store the child cannot reach (it exits at start-up)
    projector = start_projector(UNREACHABLE_POSTGRES)
    started = time.monotonic()

    # When / Then: its exit ends the wait, long before the timeout
    assert projector.ask(AwaitReady(60.0), timeout=65) is False
    assert time.monotonic() - started < 30
