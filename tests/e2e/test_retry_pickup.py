"""A person's retry goes out at once: ``smeg retry`` on a running deployment, the message
delivered within seconds (the orphan sweep would take it only 30 s after it was received)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domain.message import DELIVERED
from tests.e2e.conftest import run_cli
from tests.e2e.faulty_provider import OK
from tests.e2e.test_console import Deployment, failed
from tests.waiting import wait_until


@pytest.fixture
def deployment(tmp_path: Path, e2e_prefix: str, start_smeg: Any) -> Iterator[Deployment]:
    running = Deployment(tmp_path, e2e_prefix, start_smeg)
    yield running
    running.stop()


def test_a_retry_asked_for_on_the_cli_is_delivered_within_seconds(deployment: Deployment) -> None:
    # Given a message the provider refused a moment ago, and a provider that now accepts
    failed(deployment, ["order-77-refused"])
    deployment.provider.mode = OK
    # When an operator retries it
    asked = time.monotonic()
    result = run_cli(deployment.env, "retry", "order-77-refused", "--reason", "number unblocked")
    assert result.returncode == 0, result.stderr
    # Then the running process attempts it within a few seconds, and it is delivered
    wait_until(lambda: deployment.status("order-77-refused") == DELIVERED, 20, 0.1, message="delivered")
    assert time.monotonic() - asked < 8.0
