"""The kill switch across a process group: ``smeg providers disable`` reaches both processes of a
``smeg run --processes 2`` within seconds, their messages are held with no call to the provider,
and ``enable`` delivers every one of them, once."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from adapters.event_store import MessageStore
from domain.message import DELIVERED, HELD, Message
from tests.e2e.conftest import StubProvider, publish_requests, run_cli
from tests.e2e.test_run_processes import logged, sqlite_env, started_group
from tests.integration.test_provider_hold import outside_pace
from tests.waiting import wait_until


def seen(smeg: Any, state: str) -> set[int]:
    """The pids of the delivery processes that logged the provider in ``state``."""
    return {int(r["pid"]) for r in logged(smeg, "provider_health_seen") if r.get("state") == state}


def test_disable_holds_every_process_s_messages_and_enable_delivers_them(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given a group of two delivery processes
    env = sqlite_env(tmp_path, e2e_prefix, stub)
    smeg = start_smeg(env, "run", "--processes", "2")
    children = started_group(smeg)

    # When an operator disables the provider
    disabled = run_cli(env, "providers", "disable", "default", "--reason", "maintenance", "--by", "alice")
    assert disabled.returncode == 0, disabled.stderr
    began = time.monotonic()
    wait_until(lambda: seen(smeg, "disabled") == set(children), 10, message="both processes see it")
    took = time.monotonic() - began
    assert took < 3.0, f"seen by both after {took:.1f} s"  # refreshed every second

    # Then requests are held in both processes: no call reaches the provider
    ids = [f"sw-{i}" for i in range(40)]
    publish_requests(e2e_prefix, ids)
    store = MessageStore(f"sqlite:///{tmp_path}/smeg.db")
    try:
        wait_until(lambda: all(_status(store, m) == HELD for m in ids), 30, message="all held")
        assert sum(stub.calls.values()) == 0

        def listed() -> dict[str, Any]:
            row: dict[str, Any] = json.loads(run_cli(env, "providers", "--json").stdout)[0]
            return row

        wait_until(lambda: listed()["held"] == len(ids), 20, message="smeg providers counts them")
        assert (listed()["state"], listed()["disabled_by"]) == ("disabled", "alice")

        # When it is enabled again, every held message is delivered, once
        assert run_cli(env, "providers", "enable", "default", "--by", "bob").returncode == 0
        wait_until(lambda: all(_status(store, m) == DELIVERED for m in ids), 30, message="all delivered")
        assert all(stub.calls[m] == 1 for m in ids)
        paced = 0
        for message_id in ids:  # released at the ramp's pace: a wait for a slot is in the history
            history = store.history(Message.create_id(message_id))
            assert outside_pace(history) == ["Received", "Held", "Attempted", "Delivered"]
            paced += len(history) - 4
        assert paced > 0  # 40 at once is more than the ramp's first pace lets through
    finally:
        store.close()
    held_by = {int(r["pid"]) for r in logged(smeg, "attempt_held")}
    assert held_by == set(children)  # both processes held messages
    smeg.process.send_signal(signal.SIGTERM)
    assert smeg.wait(timeout=60) == 0


def _status(store: MessageStore, message_id: str) -> str | None:
    try:
        return store.get_by_message_id(message_id).status
    except Exception:
        return None
