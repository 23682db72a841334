"""The operators' pause across a process group: ``smeg flags set delivery.paused true`` reaches
both processes of a ``smeg run --processes 2`` within 2 s; nothing is taken from the send queue and
no due retry is attempted while it holds; on resume everything is delivered, each once. A
channel's pause (``delivery.paused.sms``) holds that channel's messages, received but not
attempted, while the other channel flows."""

from __future__ import annotations

import getpass
import json
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika

from adapters.event_store import MessageStore
from domain.message import BACKED_OFF, DELIVERED, HELD, Message
from tests.e2e.conftest import AMQP_URL, StubProvider, publish_requests, run_cli
from tests.e2e.test_run import attempts_of, wait_all_final
from tests.e2e.test_run_processes import consumers, logged, sqlite_env, started_group
from tests.waiting import wait_until

#: ``by`` of a flag set from the command line.
WHO = f"cli:{getpass.getuser()}"


def flags(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(env, "flags", *args)
    assert result.returncode == 0, result.stderr
    return result


def seen(smeg: Any, event: str, flag: str) -> set[int]:
    """The pids of the processes that logged ``event`` (delivery_paused, _resumed) for ``flag``
    (0: a process alone, whose lines name no pid)."""
    return {int(r.get("pid", 0)) for r in logged(smeg, event) if r.get("flag") == flag}


def depth(prefix: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        count: int = connection.channel().queue_declare(f"{prefix}.send", passive=True).method.message_count
        return count
    finally:
        connection.close()


def status(store: MessageStore, message_id: str) -> str | None:
    try:
        return store.get_by_message_id(message_id).status
    except Exception:
        return None


def history(store: MessageStore, message_id: str) -> list[str]:
    return [type(e).__name__ for e in store.history(Message.create_id(message_id))]


def test_a_pause_stops_every_process_taking_and_retrying_and_a_resume_delivers_everything(
    tmp_path: Path, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given a group of two whose provider fails: ten messages backed off, due again in 6 s
    stub = StubProvider(status=503)
    env = sqlite_env(tmp_path, e2e_prefix, stub, SMEG_BACKOFF_INITIAL="6")
    smeg = start_smeg(env, "run", "--processes", "2")
    children = started_group(smeg)
    store = MessageStore(f"sqlite:///{tmp_path}/smeg.db")
    retried = [f"retry-{i}" for i in range(10)]
    publish_requests(e2e_prefix, retried)
    wait_until(lambda: all(status(store, m) == BACKED_OFF for m in retried), 30, message="all backed off")

    # When an operator pauses delivery
    flags(env, "set", "delivery.paused", "true", "--reason", "incident 42")
    began = time.monotonic()
    wait_until(lambda: seen(smeg, "delivery_paused", "delivery.paused") == set(children), 10, 0.05)
    took = time.monotonic() - began
    assert took < 2.5, f"seen by both after {took:.2f} s"  # refreshed every second
    wait_until(lambda: consumers(e2e_prefix) == 0, 5, message="both consumers cancelled")
    [line, *_] = logged(smeg, "delivery_paused")
    assert (line["level"], line["by"], line["reason"]) == ("warning", WHO, "incident 42")
    stub.status = 200
    # and a process started meanwhile (a deploy during the incident) does not consume either
    late = start_smeg(env | {"SMEG_PROJECTOR": "external"}, "run")
    late.wait_for_log("runtime_started")
    assert logged(late, "intake_paused") and logged(late, "delivery_paused")

    # Then nothing is taken from the queue and no retry is attempted, though every one is due
    paused = [f"paused-{i}" for i in range(50)]
    publish_requests(e2e_prefix, paused)
    latest_due = max(store.get_by_message_id(m).retry_at for m in retried)
    hold_until = time.monotonic() + max(5.0, (latest_due - datetime.now(UTC)).total_seconds() + 1.5)
    while time.monotonic() < hold_until:
        assert depth(e2e_prefix) == 50
        assert consumers(e2e_prefix) == 0
        time.sleep(0.25)
    assert all(status(store, m) is None for m in paused)  # not even Received
    assert all(status(store, m) == BACKED_OFF for m in retried)
    assert all(len(attempts_of(store, m)) == 1 for m in retried)  # no attempt burned
    assert sum(stub.calls.values()) == len(retried)
    [row] = [r for r in json.loads(flags(env, "--json").stdout) if r["name"] == "delivery.paused"]
    assert (row["value"], row["by"], row["reason"], row["expires_at"]) == (True, WHO, "incident 42", None)

    # When it resumes
    flags(env, "set", "delivery.paused", "false", "--reason", "resolved")
    # Then all three consume again and every message is delivered, each sent once more at most
    final = wait_all_final(store, retried + paused, timeout=60)
    assert all(m.status == DELIVERED for m in final.values())
    assert all(stub.calls[m] == 1 for m in paused) and all(stub.calls[m] == 2 for m in retried)
    assert all(history(store, m) == ["Received", "Attempted", "Delivered"] for m in paused)
    wait_until(lambda: seen(smeg, "delivery_resumed", "delivery.paused") == set(children), 5, 0.05)
    wait_until(lambda: consumers(e2e_prefix) == 3, 5, message="all three consume again")
    store.close()
    late.process.send_signal(signal.SIGTERM)
    assert late.wait(timeout=60) == 0
    smeg.process.send_signal(signal.SIGTERM)
    assert smeg.wait(timeout=60) == 0
    stub.close()


def test_a_channel_s_pause_holds_its_messages_received_while_the_other_channel_flows(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given sms paused for 30 minutes
    env = sqlite_env(tmp_path, e2e_prefix, stub)
    smeg = start_smeg(env, "run")
    smeg.wait_for_log("runtime_started")
    flags(env, "set", "delivery.paused.sms", "on", "--reason", "carrier outage", "--for", "30m")
    wait_until(lambda: seen(smeg, "delivery_paused", "delivery.paused.sms"), 10, 0.05)

    # When requests of both channels come
    sms = [f"sms-{i}" for i in range(20)]
    im = [f"im-{i}" for i in range(20)]
    publish_requests(e2e_prefix, sms)
    _publish_im(e2e_prefix, im)

    # Then im is delivered; sms is received and held, no call made
    store = MessageStore(f"sqlite:///{tmp_path}/smeg.db")
    try:
        final = wait_all_final(store, im, timeout=30)
        assert all(m.status == DELIVERED for m in final.values())
        wait_until(lambda: all(status(store, m) == HELD for m in sms), 30, message="all sms held")
        assert depth(e2e_prefix) == 0  # taken from the queue all the same: the queue is shared
        held = store.history(Message.create_id(sms[0]))[1]
        assert held.reason == "delivery paused for channel sms"
        assert not any(stub.calls[m] for m in sms)
        [row] = [r for r in json.loads(flags(env, "--json").stdout) if r["name"] == "delivery.paused.sms"]
        assert (row["value"], row["by"], row["scope"]) == (True, WHO, "sms") and row["expires_at"]

        # When the channel resumes, its messages go out at once (not at their next look, 60 s on)
        flags(env, "set", "delivery.paused.sms", "off", "--reason", "carrier back")
        began = time.monotonic()
        final = wait_all_final(store, sms, timeout=30)
        took = time.monotonic() - began
        assert took < 5.0, f"delivered {took:.1f} s after the resume"
        assert all(m.status == DELIVERED for m in final.values())
        assert all(stub.calls[m] == 1 for m in sms)
        assert all(history(store, m) == ["Received", "Held", "Attempted", "Delivered"] for m in sms)
        assert seen(smeg, "delivery_resumed", "delivery.paused.sms")
    finally:
        store.close()
    smeg.process.send_signal(signal.SIGTERM)
    assert smeg.wait(timeout=60) == 0


def _publish_im(prefix: str, ids: list[str]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    for message_id in ids:
        body = {"message_id": message_id, "channel": "im", "to": "alice@example.org", "body": "hi"}
        channel.basic_publish(
            "", f"{prefix}.send", json.dumps(body).encode(), pika.BasicProperties(delivery_mode=2)
        )
    connection.close()
