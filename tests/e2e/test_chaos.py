"""The chaos proof (``scripts/chaos.py``) in CI: a short run under SIGKILLs, and its checker's teeth.

The run is the script's own ``run_chaos`` with fewer messages and faster kills; the checker tests
feed it histories that lose, strand or garble a message, so a verdict of "every invariant held"
cannot come from a checker that looks at nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from scripts import chaos
from tests.e2e.conftest import AMQP_URL


def record(version: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"version": version, "type": kind, "timestamp": f"2026-12-01T00:00:{version:02d}Z", **fields}


def delivered_history(receipt: str = "chaos-2", *, interrupted: bool = False) -> list[dict[str, Any]]:
    """Received, a first attempt (refused with 503, or cut by a kill), a second one delivered."""
    first = (
        record(3, "BackedOff", attempt=1, reason="interrupted", delay_seconds=0.0, status_code=None,
               retry_at="2026-12-01T00:00:03Z")
        if interrupted
        else record(3, "BackedOff", attempt=1, reason="http 503", delay_seconds=0.2, status_code=503,
                    retry_at="2026-12-01T00:00:03.200000Z")
    )  # fmt: skip
    return [
        record(1, "Received"),
        record(2, "Attempted", attempt=1),
        first,
        record(4, "Attempted", attempt=2),
        record(5, "Delivered", attempt=2, provider_message_id=receipt),
    ]


def call(
    seq: int, message_id: str, status: int, incarnation: str = "s1g1", key: str | None = None
) -> chaos.Call:
    receipt = f"chaos-{seq}" if status == 200 else None
    return chaos.Call(seq, message_id, key or message_id, incarnation, status, receipt)


def test_a_legal_history_passes_and_each_broken_rule_is_named() -> None:
    good = delivered_history()
    assert chaos.history_problem(good) is None
    assert chaos.final_state(good) == chaos.DELIVERED
    assert "without an attempt" in str(
        chaos.history_problem([record(1, "Received"), record(2, "Delivered", attempt=1)])
    )
    early = [*good[:3], {**good[3], "timestamp": "2026-12-01T00:00:03.100000Z"}]
    assert "before retry_at" in str(chaos.history_problem(early))
    twice = [*good[:2], record(3, "Attempted", attempt=2)]
    assert "has no outcome" in str(chaos.history_problem(twice))
    after = [*good, record(6, "Attempted", attempt=3)]
    assert "after Delivered" in str(chaos.history_problem(after))
    gap = [good[0], {**good[1], "version": 3}]
    assert "versions" in str(chaos.history_problem(gap))
    assert "Received" in str(chaos.history_problem(good[1:]))


def test_a_held_message_s_history_is_legal_and_held_is_refused_during_an_attempt() -> None:
    held = [
        record(1, "Received"),
        record(2, "Held", provider="chaos", until="2026-12-01T00:00:30Z", reason="circuit open"),
        record(3, "Attempted", attempt=1, trial=True),  # before `until`: its provider took attempts again
        record(4, "Delivered", attempt=1, provider_message_id="chaos-2"),
    ]
    assert chaos.history_problem(held) is None
    assert chaos.final_state(held[:2]) == chaos.HELD
    during = [record(1, "Received"), record(2, "Attempted", attempt=1), record(3, "Held", provider="chaos")]
    assert "Held while attempt 1 has no outcome" in str(chaos.history_problem(during))


def test_the_verdict_names_lost_stuck_and_unexplained_duplicates() -> None:
    report = chaos.ChaosReport(config=chaos.ChaosConfig(messages=5))
    histories = {
        "ok": delivered_history(),
        "stuck": delivered_history()[:4],
        "dup": delivered_history("chaos-6"),
        "dup-killed": delivered_history("chaos-9", interrupted=True),
    }
    calls = [
        call(1, "ok", 503),
        call(2, "ok", 200),
        call(3, "stuck", 503),
        call(4, "dup", 503),
        call(5, "dup", 200),  # accepted, not recorded, and its process was never killed
        call(6, "dup", 200),
        call(7, "dup-killed", 200, incarnation="s0g1"),  # cut by the kill of s0g1: fine
        call(9, "dup-killed", 200, incarnation="s0g2"),
        call(10, "ok", 503, key="someone-else"),
    ]
    statuses = {"ok": "delivered", "stuck": "delivered", "dup": "delivered", "dup-killed": "delivered"}
    published = ["ok", "lost", "stuck", "dup", "dup-killed"]
    chaos.examine(report, published, histories, statuses, calls, killed={"s0g1"})
    assert report.lost == ["lost"]
    assert report.stuck == ["stuck"]
    assert report.delivered == 3
    assert report.read_model_mismatches == ["stuck: read model delivered, store in_flight"]
    assert report.provider.duplicate_messages == 2
    assert report.provider.unrecorded_by_kills == 1
    assert report.provider.key_mismatches
    assert any("dup: answers to live processes missing from the history (#5 by s1g1)" in p
               for p in report.provider.problems)  # fmt: skip
    assert any("ok: 3 provider calls, 2 Attempted" in p for p in report.provider.problems)
    text = "\n".join(report.violations)
    for expected in ("1 lost", "1 stuck", "read-model rows", "foreign Idempotency-Key", "provider findings"):
        assert expected in text


def test_an_earlier_attempts_answer_recorded_for_a_later_attempt_is_named() -> None:
    # Attempt 1's call was accepted, attempt 2 began 1 s later, and the Delivered of attempt 2 names
    # attempt 1's receipt, while attempt 2's own acceptance is nowhere: what a stale outcome does.
    report = chaos.ChaosReport(config=chaos.ChaosConfig(messages=1))
    history = delivered_history("chaos-1", interrupted=True)
    began = chaos.when(history[3]["timestamp"]).timestamp()
    calls = [
        dataclasses.replace(call(1, "m", 200, incarnation="s0g1"), wall=began - 1.0),
        dataclasses.replace(call(2, "m", 200, incarnation="s1g1"), wall=began + 0.1),
    ]
    chaos.examine(report, ["m"], {"m": history}, {"m": "delivered"}, calls, killed=set())
    assert any("gave 1.00 s before that attempt began" in p for p in report.provider.problems)
    assert any("(#2 by s1g1)" in p for p in report.provider.problems)


def test_duplicates_explained_by_a_kill_or_by_a_timeout_are_no_violation() -> None:
    report = chaos.ChaosReport(config=chaos.ChaosConfig(messages=2))
    timed_out = delivered_history("chaos-4")
    timed_out[2] = {**timed_out[2], "reason": "timeout (no answer)", "status_code": None}
    histories = {"killed": delivered_history("chaos-2", interrupted=True), "slow": timed_out}
    calls = [
        call(1, "killed", 200, incarnation="s2g1"),  # its process died before recording it
        call(2, "killed", 200, incarnation="s2g2"),
        call(3, "slow", 200, incarnation="s1g1"),  # answered after s1g1 stopped waiting
        call(4, "slow", 200, incarnation="s1g1"),
    ]
    statuses = {"killed": "delivered", "slow": "delivered"}
    chaos.examine(report, ["killed", "slow"], histories, statuses, calls, killed={"s2g1"})
    assert report.violations == []
    assert report.provider.duplicate_deliveries == 2
    assert (report.provider.unrecorded_by_kills, report.provider.unrecorded_by_timeouts) == (1, 1)


def test_three_processes_killed_every_few_seconds_lose_nothing(postgres_url: str, e2e_prefix: str) -> None:
    # Given three smeg run processes on one PostgreSQL schema and one queue, a provider failing
    # a fifth of its calls, and a SIGKILL of one of them every 2.5 s while requests arrive (8
    # kills: each slot killed at least twice, then a drain with no kills)
    config = chaos.ChaosConfig(
        messages=2000,
        processes=3,
        kill_every=2.5,
        fault_rate=0.2,
        database_url=postgres_url,
        amqp_url=AMQP_URL,
        publish_rate=200,
        drain=60,
        chaos_timeout=60,
        max_kills=8,
        prefix=e2e_prefix,
        seed=13,
        quiet=True,
    )
    # When
    report = chaos.run_chaos(config)
    # Then the kills happened while messages were in flight, and every invariant held
    summary = chaos.describe(report)
    assert report.kills == 8, summary
    assert report.interrupted > 0, summary  # the kills cut attempts in flight
    assert report.published == 2000, summary
    assert report.lost == [], summary
    assert report.stuck == [], summary
    assert report.failed == [], summary
    assert report.invalid == {}, summary
    assert report.delivered == 2000, summary
    assert report.provider.duplicates_with_same_key, summary
    assert report.violations == [], summary + "\n" + "\n".join(chaos.log_tails(report))


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_an_impossible_fault_rate_is_refused_before_anything_starts(rate: float) -> None:
    with pytest.raises(chaos.ChaosAborted, match="fault-rate"):
        chaos.run_chaos(chaos.ChaosConfig(fault_rate=rate))
