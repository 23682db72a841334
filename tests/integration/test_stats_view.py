"""The statistics projections on a SQLite file and on PostgreSQL: exact counts (per hour, per
minute, messages by outcome), batch-independence, the upgrade of an older database, and the
report's numbers at minute resolution."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, Table, select

from adapters.event_store import Change, MessageStore, event_type
from adapters.projections import ProjectionRunner, ShadowRebuild, tracking
from adapters.sql import make_engine
from adapters.stats_queries import HOUR, MINUTE, event_sums, outcome_sums, window
from adapters.stats_view import (
    COUNTER_COLUMNS,
    HISTOGRAM_COLUMNS,
    OUTCOME_COLUMNS,
    DeliveryStatsMinutelyProjection,
    DeliveryStatsProjection,
    FailureReasonsProjection,
    delivery_stats_hourly,
    delivery_stats_minutely,
    failures_by_reason,
    stats_projections,
)
from domain.backoff import BackoffPolicy
from domain.canary import CANARY_TAG
from domain.message import Message
from smeg_actors.cli.report_data import Outcomes, build_report, report_bins

TABLES = (delivery_stats_hourly, delivery_stats_minutely, failures_by_reason)
MINUTELY = ("minute", "provider", "channel")
UTC = timezone.utc


@dataclass
class Db:
    store: MessageStore
    engine: Engine

    def runners(self, *, batch: int = 1000) -> Runners:
        """One runner per projection, each reading ``batch`` events per step."""
        projections = stats_projections()
        return Runners(
            [ProjectionRunner(self.store, self.engine, [p], name=p.name, batch=batch) for p in projections]
        )

    def save(self, *messages: Message) -> None:
        outcomes = self.store.commit([Change(load=_as_is(m)) for m in messages])
        assert all(o.saved for o in outcomes)


def _as_is(message: Message) -> Callable[[], Message]:
    return lambda: message


@dataclass
class Runners:
    """One runner per projection, named after it (as the runtime wires read models)."""

    runners: list[ProjectionRunner]

    def step(self) -> int:
        return sum(runner.step() for runner in self.runners)

    def catch_up(self) -> int:
        return sum(runner.catch_up() for runner in self.runners)

    def rebuild(self) -> int:
        return sum(runner.rebuild() for runner in self.runners)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Db]:
    if request.param == "sqlite":
        url, schema = f"sqlite:///{tmp_path}/stats.db", ""
    else:
        url, schema = request.getfixturevalue("pg_schema")
    store = MessageStore(url, schema=schema)
    engine = make_engine(url, schema=schema)
    yield Db(store, engine)
    store.close()
    engine.dispose()


def _norm(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value


def snapshot(engine: Engine, table: Table) -> list[tuple[Any, ...]]:
    """Every row, in key order, datetimes as UTC."""
    with engine.connect() as connection:
        rows = connection.execute(select(table).order_by(*table.primary_key.columns)).all()
    return [tuple(_norm(v) for v in row) for row in rows]


def snapshots(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    return {table.name: snapshot(engine, table) for table in TABLES}


def nonzero(engine: Engine, table: Table, key: tuple[str, ...]) -> dict[tuple[Any, ...], dict[str, int]]:
    """Rows as key → the counters that are not zero."""
    with engine.connect() as connection:
        rows = [row._mapping for row in connection.execute(select(table))]
    return {
        tuple(_norm(row[k]) for k in key): {c: v for c, v in row.items() if c not in key and v}
        for row in rows
    }


# --- a small history, counted by hand -------------------------------------------------------

DAY1 = datetime(2024, 6, 1, 10, 0, tzinfo=UTC)
SHORT = BackoffPolicy(initial=60, factor=2, max_delay=600, max_attempts=2)


def at(hours: int = 0, minutes: int = 0, seconds: float = 0) -> datetime:
    return DAY1 + timedelta(hours=hours, minutes=minutes, seconds=seconds)


def small_history(db: Db) -> None:
    """Six messages; each step is saved on its own, so the log is in time order."""

    def new(name: str, channel: str, requested: str | None, now: datetime) -> Message:
        message = Message.receive(
            message_id=name,
            channel=channel,
            to="+4411",
            body="hi",
            correlation_id=name,
            now=now,
            provider=requested,
        )
        db.save(message)
        return message

    def step(message: Message, method: str, *args: Any, **kwargs: Any) -> None:
        getattr(message, method)(*args, **kwargs)
        db.save(message)

    def transient(message: Message, reason: str, now: datetime) -> None:
        step(message, "record_transient_failure", reason, error="e", policy=SHORT, now=now)

    m1 = new("m1", "sms", None, at())
    m2 = new("m2", "sms", "beta", at(minutes=10))
    m3 = new("m3", "im", "alpha", at(minutes=20))
    m4 = new("m4", "sms", None, at(minutes=30))
    m5 = new("m5", "im", None, at(minutes=40))
    m6 = new("m6", "im", None, at(minutes=50))
    step(m1, "start_attempt", "alpha", now=at(seconds=0.05))
    step(m1, "record_delivery", "p1", now=at(seconds=0.2))  # 200 ms
    step(m2, "start_attempt", "alpha", now=at(minutes=10, seconds=1))
    transient(m2, "throttled", at(minutes=10, seconds=2))
    step(m3, "start_attempt", "alpha", now=at(minutes=20, seconds=0.5))
    step(m3, "record_permanent_failure", "invalid_recipient", error="e", now=at(minutes=20, seconds=1))
    step(m3, "archive", "ops", reason="known bad number", now=at(minutes=25))  # still failed
    step(m4, "start_attempt", "alpha", now=at(minutes=30, seconds=1))
    transient(m4, "timeout", at(minutes=30, seconds=2))
    step(m4, "start_attempt", "alpha", now=at(minutes=31, seconds=5))
    transient(m4, "timeout", at(minutes=31, seconds=6))  # exhausted: Failed(timeout)
    step(m5, "start_attempt", "beta", now=at(minutes=40, seconds=1))
    step(m5, "record_interruption", policy=SHORT, now=at(minutes=45))  # BackedOff(interrupted)
    step(m5, "start_attempt", "beta", now=at(minutes=45, seconds=1))
    step(m5, "record_delivery", "p5", now=at(minutes=45, seconds=3.5))  # 5 min 3.5 s
    step(m6, "hold", "alpha", until=at(minutes=51), reason="circuit open", now=at(minutes=50, seconds=1))
    step(m2, "start_attempt", "beta", now=at(minutes=59, seconds=59))
    step(m2, "record_delivery", "p2", now=at(hours=1, seconds=30))  # 50 min 30 s, in hour 11
    step(m4, "request_retry", "ops", now=at(hours=14, seconds=10))  # next day
    step(m4, "start_attempt", "beta", now=at(hours=14, seconds=11))
    step(m4, "record_delivery", "p4", now=at(hours=14, seconds=12))  # 13 h 30 min 12 s


H10, H11, H00 = at(), at(hours=1), at(hours=14)

EVENTS = 27  # in small_history

EXPECTED_HOURLY = {
    (H10, "", "sms"): {"received": 2},
    (H10, "", "im"): {"received": 2},
    (H10, "beta", "sms"): {"received": 1, "attempts": 1},
    (H10, "alpha", "im"): {"received": 1, "attempts": 1, "failed_permanent": 1},
    (H10, "alpha", "sms"): {
        "attempts": 4,
        "delivered": 1,
        "backed_off": 2,
        "failed_exhausted": 1,
        "latency_sum_ms": 200,
        "latency_count": 1,
        "lat_le_250ms": 1,
    },
    (H10, "beta", "im"): {
        "attempts": 2,
        "backed_off": 1,
        "delivered": 1,
        "delivered_retried": 1,
        "latency_sum_ms": 303_500,
        "latency_count": 1,
        "lat_le_900s": 1,
    },
    (H11, "beta", "sms"): {
        "delivered": 1,
        "delivered_retried": 1,
        "latency_sum_ms": 3_030_000,
        "latency_count": 1,
        "lat_le_3600s": 1,
    },
    (H00, "beta", "sms"): {
        "attempts": 1,
        "delivered": 1,
        "delivered_retried": 1,
        "latency_sum_ms": 48_612_000,
        "latency_count": 1,
        "lat_gt_3600s": 1,
    },
}


def m(minutes: int, hours: int = 0) -> datetime:
    return at(hours=hours, minutes=minutes)


# Event counters in the minute of their event; msg_* in the minute each message was received,
# under the provider that handles it (latest attempt, else held for, else requested).
EXPECTED_MINUTELY = {
    (m(0), "", "sms"): {"received": 1},
    (m(0), "alpha", "sms"): {"attempts": 1, "delivered": 1, "msg_delivered_first": 1}
    | {"latency_sum_ms": 200, "latency_count": 1, "lat_le_250ms": 1},
    (m(10), "beta", "sms"): {"received": 1, "msg_delivered_retried": 1},  # m2 asked for beta
    (m(10), "alpha", "sms"): {"attempts": 1, "backed_off": 1},  # m2 counted here until beta took it
    (m(20), "alpha", "im"): {"received": 1, "attempts": 1, "failed_permanent": 1, "msg_failed_permanent": 1},
    (m(30), "", "sms"): {"received": 1},
    (m(30), "alpha", "sms"): {"attempts": 1, "backed_off": 1},
    (m(30), "beta", "sms"): {"msg_delivered_retried": 1},  # m4: redriven the next day, delivered by beta
    (m(31), "alpha", "sms"): {"attempts": 1, "failed_exhausted": 1},
    (m(40), "", "im"): {"received": 1},
    (m(40), "beta", "im"): {"attempts": 1, "msg_delivered_retried": 1},
    (m(45), "beta", "im"): {"backed_off": 1, "attempts": 1, "delivered": 1, "delivered_retried": 1}
    | {"latency_sum_ms": 303_500, "latency_count": 1, "lat_le_900s": 1},
    (m(50), "", "im"): {"received": 1},
    (m(50), "alpha", "im"): {"msg_pending": 1},  # m6: held for alpha, never attempted
    (m(59), "beta", "sms"): {"attempts": 1},
    (m(0, 1), "beta", "sms"): {"delivered": 1, "delivered_retried": 1}
    | {"latency_sum_ms": 3_030_000, "latency_count": 1, "lat_le_3600s": 1},
    (m(0, 14), "beta", "sms"): {"attempts": 1, "delivered": 1, "delivered_retried": 1}
    | {"latency_sum_ms": 48_612_000, "latency_count": 1, "lat_gt_3600s": 1},
}

EXPECTED_REASONS = {
    (date(2024, 6, 1), "alpha", "throttled"): {"backed_off": 1},
    (date(2024, 6, 1), "alpha", "invalid_recipient"): {"failed": 1, "permanent": 1},
    (date(2024, 6, 1), "alpha", "timeout"): {"backed_off": 1, "failed": 1, "exhausted": 1},
    (date(2024, 6, 1), "beta", "interrupted"): {"backed_off": 1},
}


@pytest.mark.parametrize("batch", [1, 3, 1000])
def test_small_history_counts_match_hand_computed(db: Db, batch: int) -> None:
    small_history(db)
    assert db.runners(batch=batch).catch_up() == 3 * EVENTS  # each projection applies every event

    assert nonzero(db.engine, delivery_stats_hourly, ("hour", "provider", "channel")) == EXPECTED_HOURLY
    assert nonzero(db.engine, failures_by_reason, ("day", "provider", "reason")) == EXPECTED_REASONS
    assert nonzero(db.engine, delivery_stats_minutely, MINUTELY) == EXPECTED_MINUTELY


def test_canaries_are_left_out_of_the_reports(db: Db) -> None:
    # Given the small history, and canaries delivered and failed beside it
    small_history(db)
    for number, fails in ((1, False), (2, True)):
        canary = Message.receive(
            message_id=f"smeg-canary.n.{number}",
            channel="sms",
            to="+4411",
            body="smeg canary",
            correlation_id="c",
            metadata={CANARY_TAG: "n/1"},
            now=at(minutes=5),
        )
        canary.start_attempt("alpha", now=at(minutes=5, seconds=1))
        if fails:
            canary.record_permanent_failure("invalid_recipient", error="e", now=at(minutes=5, seconds=2))
        else:
            canary.record_delivery("p9", now=at(minutes=5, seconds=2))
        db.save(canary)

    # When
    db.runners().catch_up()

    # Then the counts are the small history's alone
    assert nonzero(db.engine, delivery_stats_hourly, ("hour", "provider", "channel")) == EXPECTED_HOURLY
    assert nonzero(db.engine, failures_by_reason, ("day", "provider", "reason")) == EXPECTED_REASONS
    assert nonzero(db.engine, delivery_stats_minutely, MINUTELY) == EXPECTED_MINUTELY


def test_a_retried_failure_is_pending_again_until_its_next_outcome(db: Db) -> None:
    # Given a message that gave up, counted by the minute it was received
    message = Message.receive(
        message_id="again", channel="sms", to="+4411", body="hi", correlation_id="c", now=at()
    )
    message.start_attempt("alpha", now=at(seconds=1))
    message.record_transient_failure("timeout", error="e", policy=SHORT, now=at(seconds=2))
    message.start_attempt("alpha", now=at(minutes=2))
    message.record_transient_failure("timeout", error="e", policy=SHORT, now=at(minutes=2, seconds=1))
    db.save(message)
    runners = db.runners()
    runners.catch_up()

    def outcomes() -> dict[tuple[Any, ...], dict[str, int]]:
        rows = nonzero(db.engine, delivery_stats_minutely, MINUTELY)
        return {key: {c: n for c, n in row.items() if c.startswith("msg_")} for key, row in rows.items()}

    assert outcomes()[m(0), "alpha", "sms"] == {"msg_failed_exhausted": 1}

    # When an operator retries it, and archives nothing
    message.request_retry("ops", now=at(minutes=10))
    db.save(message)
    runners.catch_up()

    # Then it is pending again, no longer failed; a later refusal by beta moves it once more
    assert outcomes()[m(0), "alpha", "sms"] == {"msg_pending": 1}
    message.start_attempt("beta", now=at(minutes=11))
    message.record_permanent_failure("blocked", error="e", now=at(minutes=11, seconds=1))
    message.archive("ops", reason="blocked for good", now=at(minutes=12))
    db.save(message)
    runners.catch_up()
    assert {k: v for k, v in outcomes().items() if v} == {(m(0), "beta", "sms"): {"msg_failed_permanent": 1}}


def test_an_older_database_gets_the_minute_table_filled_from_the_whole_log(db: Db) -> None:
    # Given a database kept by a version without delivery_stats_minutely, at the head of the log
    small_history(db)
    old = [DeliveryStatsProjection(), FailureReasonsProjection()]
    assert sum(ProjectionRunner(db.store, db.engine, [p], name=p.name).catch_up() for p in old) == 2 * EVENTS
    delivery_stats_minutely.drop(db.engine)

    # When this version's runners start (they create missing tables) and catch up
    applied = db.runners().catch_up()

    # Then only the new read model replays the log, from its start, and its counts are exact
    assert applied == EVENTS
    assert nonzero(db.engine, delivery_stats_minutely, MINUTELY) == EXPECTED_MINUTELY
    assert nonzero(db.engine, delivery_stats_hourly, ("hour", "provider", "channel")) == EXPECTED_HOURLY


def test_a_window_inside_an_hour_is_reported_to_the_minute(db: Db) -> None:
    small_history(db)
    db.runners().catch_up()

    # 10:05:30 – 10:34:10 is read as the minutes 10:05 – 10:35, not as the hour 10:00 – 11:00
    report = build_report(db.engine, at(minutes=5, seconds=30), at(minutes=34, seconds=10))

    assert report.window is not None and report.window.bin == MINUTE and report.window.rounded
    assert (report.window.since, report.window.until) == (m(5), m(35))
    lines = {(line.provider, line.channel): line for line in report.lines}
    assert list(lines) == [("alpha", "im"), ("alpha", "sms"), ("beta", "sms")]
    # m3, received 10:20 and refused by alpha; m2 (10:10) and m4 (10:30), both delivered by beta
    assert lines["alpha", "im"].messages == Outcomes(failed_permanent=1)
    assert lines["beta", "sms"].messages == Outcomes(delivered_after_retry=2)
    assert lines["beta", "sms"].received == 2 and lines["beta", "sms"].attempts == 0
    alpha = lines["alpha", "sms"]
    assert (alpha.received, alpha.attempts, alpha.backed_off, alpha.failed_exhausted) == (0, 3, 2, 1)
    total = report.total
    assert total.messages == Outcomes(delivered_after_retry=2, failed_permanent=1)
    assert (total.received, total.attempts, total.backed_off, total.delivered, total.failed) == (
        3,
        4,
        2,
        0,
        2,
    )
    assert report.reason_days == (date(2024, 6, 1), date(2024, 6, 1))


def test_a_long_window_reads_hours_and_still_counts_each_message_once(db: Db) -> None:
    small_history(db)
    db.runners().catch_up()

    report = build_report(db.engine, at(hours=-1), at(hours=15))

    assert report.window is not None and report.window.bin == HOUR and not report.window.rounded
    by_line = {(line.provider, line.channel): line.messages for line in report.lines}
    assert by_line == {
        ("alpha", "im"): Outcomes(failed_permanent=1, pending=1),  # m3 refused; m6 held for alpha
        ("alpha", "sms"): Outcomes(delivered_first_try=1),
        ("beta", "im"): Outcomes(delivered_after_retry=1),
        ("beta", "sms"): Outcomes(delivered_after_retry=2),
    }
    assert report.total.received == 6 and report.total.delivered == 4 and report.total.attempts == 9


@pytest.mark.parametrize("size", [MINUTE, HOUR])
def test_the_charts_bins_stack_each_message_once_in_the_bin_it_was_received(db: Db, size: Any) -> None:
    small_history(db)
    db.runners().catch_up()

    span, bins = report_bins(db.engine, at(), at(hours=2), None, size)

    assert [b.start for b in bins] == span.starts() and len(bins) == (120 if size == MINUTE else 2)
    received = {b.start: b.messages for b in bins if b.messages.received}
    if size == MINUTE:
        assert received == {
            m(0): Outcomes(delivered_first_try=1),
            m(10): Outcomes(delivered_after_retry=1),
            m(20): Outcomes(failed_permanent=1),
            m(30): Outcomes(delivered_after_retry=1),
            m(40): Outcomes(delivered_after_retry=1),
            m(50): Outcomes(pending=1),
        }
        assert bins[45].events.delivered == 1 and bins[45].events.p50_ms == 900_000
    else:
        assert received == {H10: Outcomes(1, 3, 1, 0, 1)}
        assert [b.events.delivered for b in bins] == [2, 1]


def test_sums_per_hour_and_provider_from_both_tables(db: Db) -> None:
    """What the console's failures-per-provider-and-hour reads; messages summed from minute rows."""
    small_history(db)
    db.runners().catch_up()
    span = window(at(), at(hours=2), HOUR)

    events = event_sums(db.engine, span, None, "bin_provider")
    messages = outcome_sums(db.engine, span, None, "bin_provider")

    failed = {key: row["failed_permanent"] + row["failed_exhausted"] for key, row in events.items()}
    assert {key: n for key, n in failed.items() if n} == {(H10, "alpha"): 2}
    assert events[H11, "beta"]["delivered"] == 1
    received = {key: sum(row.values()) for key, row in messages.items()}
    assert {key: n for key, n in received.items() if n} == {(H10, "alpha"): 3, (H10, "beta"): 3}


# --- a scripted history of 2,000 messages ---------------------------------------------------

START = datetime(2024, 5, 1, 21, 0, tzinfo=UTC)  # runs past midnight: two days of reasons
POLICY = BackoffPolicy(initial=60, factor=2, max_delay=600, max_attempts=3)
TRANSIENT = ("throttled", "provider_unavailable", "timeout")
KINDS = ("ok", "retry_ok", "permanent", "exhausted", "redrive", "interrupted", "pending", "in_flight")
WEIGHTS = (50, 15, 8, 6, 6, 5, 5, 5)

Step = tuple[datetime, int, int, str, Any]  # when, message, sequence, action, argument


def plan(rng: random.Random, i: int) -> list[Step]:
    """One message's scripted life: its actions and when they happen."""
    t = START + timedelta(seconds=9 * i, microseconds=rng.randrange(1_000_000))
    steps: list[Step] = []

    def do(action: str, argument: Any = None, *, after: float = 0.0) -> None:
        nonlocal t
        t += timedelta(seconds=after)
        steps.append((t, i, len(steps), action, argument))

    def cycle(failures: int, provider: str) -> None:
        """``failures`` transient failures, each waited out (unless it exhausts the cycle)."""
        for k in range(1, failures + 1):
            do("attempt", provider, after=rng.uniform(0.01, 2))
            do("transient", rng.choice(TRANSIENT), after=rng.uniform(0.05, 3))
            if k < POLICY.max_attempts:
                t_wait = POLICY.delay(k) + rng.uniform(0, 30)
                do("noop", after=t_wait)

    provider = rng.choice(("alpha", "beta"))
    do("receive", (rng.choice(("sms", "im")), rng.choice((None, "alpha", "beta"))))
    kind = rng.choices(KINDS, WEIGHTS)[0]
    if kind in ("ok", "retry_ok"):
        cycle(rng.randint(1, 2) if kind == "retry_ok" else 0, provider)
        do("attempt", provider, after=rng.uniform(0.01, 2))
        do("deliver", after=rng.expovariate(1 / 1.5))
    elif kind == "permanent":
        cycle(rng.randint(0, 1), provider)
        do("attempt", provider, after=rng.uniform(0.01, 2))
        do("permanent", rng.choice(("invalid_recipient", "blocked")), after=rng.uniform(0.05, 1))
    elif kind in ("exhausted", "redrive"):
        cycle(POLICY.max_attempts, provider)
        if kind == "redrive":
            do("retry", after=rng.uniform(600, 7200))
            do("attempt", "beta" if provider == "alpha" else "alpha", after=rng.uniform(0.01, 2))
            do("deliver", after=rng.uniform(0.05, 5))
    elif kind == "interrupted":
        do("attempt", provider, after=rng.uniform(0.01, 2))
        do("interrupt", after=rng.uniform(30, 120))
        do("attempt", provider, after=rng.uniform(0.01, 2))
        do("deliver", after=rng.uniform(0.05, 5))
    elif kind == "in_flight":
        do("attempt", provider, after=rng.uniform(0.01, 2))
    return [s for s in steps if s[3] != "noop"]


def act(messages: dict[int, Message], step: Step) -> Message:
    now, i, _, action, argument = step
    if action == "receive":
        channel, requested = argument
        messages[i] = Message.receive(
            message_id=f"m-{i}",
            channel=channel,
            to="+4411",
            body="hi",
            correlation_id=f"c-{i}",
            now=now,
            provider=requested,
        )
        return messages[i]
    message = messages[i]
    if action == "attempt":
        message.start_attempt(argument, now=now)
    elif action == "deliver":
        message.record_delivery(f"p-{i}", now=now)
    elif action == "transient":
        message.record_transient_failure(argument, error="e", policy=POLICY, now=now, status_code=503)
    elif action == "permanent":
        message.record_permanent_failure(argument, error="e", now=now, status_code=400)
    elif action == "retry":
        message.request_retry("ops", now=now)
    elif action == "interrupt":
        message.record_interruption(policy=POLICY, now=now)
    return message


def big_history(db: Db, *, follow: Runners | None = None, count: int = 2000) -> None:
    """Write the scripted history in time order, 50 steps per commit; ``follow`` tails it meanwhile."""
    rng = random.Random(20240501)
    steps = sorted(step for i in range(count) for step in plan(rng, i))
    messages: dict[int, Message] = {}
    for n in range(0, len(steps), 50):
        touched = {id(m): m for m in (act(messages, step) for step in steps[n : n + 50])}
        db.save(*touched.values())
        if follow is not None and n % 500 == 0:
            follow.step()


def test_incremental_equals_rebuild_and_nothing_applies_twice(db: Db) -> None:
    incremental = db.runners(batch=37)
    big_history(db, follow=incremental)
    incremental.catch_up()
    after_catch_up = snapshots(db.engine)
    assert all(after_catch_up.values())

    assert incremental.catch_up() == 0
    assert db.runners(batch=37).step() == 0  # another node: nothing left to apply
    assert snapshots(db.engine) == after_catch_up

    assert db.runners(batch=1000).rebuild() == 3 * len(list(db.store.iter_log()))
    assert snapshots(db.engine) == after_catch_up


def test_runners_started_afresh_every_batch_read_what_they_need_from_the_history(db: Db) -> None:
    """No memory carried between batches (a restart before each): every fact comes from the store."""
    big_history(db, count=600)
    db.runners(batch=1000).catch_up()
    expected = snapshots(db.engine)
    db.runners().rebuild()
    for runner in db.runners().runners:
        with db.engine.begin() as connection:
            connection.execute(tracking.delete().where(tracking.c.projection == runner.name))
            for projection in runner.projections:
                projection.clear(connection)

    while db.runners(batch=53).step():
        pass
    assert snapshots(db.engine) == expected


def test_runners_that_keep_only_a_few_messages_in_memory_count_the_same(db: Db) -> None:
    """Evictions between batches (a capacity of 3 messages) only cost reads of the history."""
    big_history(db, count=600)
    db.runners(batch=1000).catch_up()
    expected = snapshots(db.engine)
    small = db.runners(batch=37)
    for runner in small.runners:
        for projection in runner.projections:
            projection.facts.capacity = 3  # type: ignore[attr-defined]
    small.rebuild()
    assert snapshots(db.engine) == expected


class FailingWrite(Exception):
    pass


def test_a_batch_rolled_back_after_folding_is_counted_once_when_applied_again(db: Db) -> None:
    """The projections' memory ran ahead of the table: it must not be trusted on the retry."""
    big_history(db, count=600)
    db.runners(batch=1000).catch_up()
    expected = snapshots(db.engine)
    runners = db.runners(batch=41)
    runners.rebuild()  # the same objects: their memory now holds every message's last facts
    with db.engine.begin() as connection:
        for runner in runners.runners:
            connection.execute(tracking.delete().where(tracking.c.projection == runner.name))
            for projection in runner.projections:
                projection.clear(connection)

    steps = 0
    for n in range(200):
        if n % 3 == 1:
            for runner in runners.runners:
                start = runner.position()
                entries, _ = db.store.read_events(start, 41)
                with pytest.raises(FailingWrite), db.engine.begin() as connection:
                    for projection in runner.projections:
                        projection.prepare(connection, [e for _, e in entries], db.store.histories)
                    raise FailingWrite
        steps += runners.step()
    runners.catch_up()
    assert steps > 0
    assert snapshots(db.engine) == expected


def test_a_fold_that_ran_ahead_does_not_lend_a_later_provider_to_an_earlier_failure(db: Db) -> None:
    """Attempted(alpha) | BackedOff, Attempted(beta), BackedOff: the first BackedOff is alpha's,
    even when the second batch was folded once (memory now says beta) and rolled back."""
    message = Message.receive(
        message_id="ahead", channel="sms", to="+4411", body="hi", correlation_id="c", now=at()
    )
    db.save(message)
    for provider, minute in (("alpha", 0), ("beta", 5)):
        message.start_attempt(provider, now=at(minutes=minute, seconds=1))
        db.save(message)
        failed_at = at(minutes=minute, seconds=2)
        message.record_transient_failure("throttled", error="e", policy=SHORT, now=failed_at)
        db.save(message)
    runners = db.runners(batch=2)
    assert runners.step() == 3 * 2  # Received, Attempted(alpha)
    for runner in runners.runners:
        entries, _ = db.store.read_events(runner.position(), 3)
        with pytest.raises(FailingWrite), db.engine.begin() as connection:
            for projection in runner.projections:
                projection.prepare(connection, [e for _, e in entries], db.store.histories)
            raise FailingWrite
    for runner in runners.runners:
        runner.batch = 3
    assert runners.step() == 3 * 3
    reasons = nonzero(db.engine, failures_by_reason, ("day", "provider", "reason"))
    assert reasons == {
        (date(2024, 6, 1), "alpha", "throttled"): {"backed_off": 1},
        (date(2024, 6, 1), "beta", "throttled"): {"failed": 1, "exhausted": 1},
    }


def test_shadow_rebuild_swaps_in_the_same_rows_twice_over(db: Db) -> None:
    big_history(db, count=400)
    db.runners(batch=37).catch_up()
    expected = snapshots(db.engine)

    for _ in range(2):
        for projection in stats_projections():
            ShadowRebuild(db.store, db.engine, [projection], name=projection.name, batch=101).run()
        assert snapshots(db.engine) == expected
    assert db.runners().catch_up() == 0


def test_totals_agree_with_the_log(db: Db) -> None:
    big_history(db)
    db.runners(batch=37).catch_up()
    log = [event for _, event in db.store.iter_log()]
    kinds = Counter(event_type(e) for e in log)
    failed = [e for e in log if isinstance(e, Message.Failed)]
    backed_off = [e for e in log if isinstance(e, Message.BackedOff)]
    hourly = nonzero(db.engine, delivery_stats_hourly, ("hour", "provider", "channel"))
    total: Counter[str] = Counter()
    for counters in hourly.values():
        total.update(counters)

    assert total["received"] == kinds["Received"] == 2000
    assert total["attempts"] == kinds["Attempted"]
    assert total["delivered"] == total["latency_count"] == kinds["Delivered"]
    assert total["backed_off"] == kinds["BackedOff"]
    assert total["failed_permanent"] == sum(e.permanent for e in failed) > 0
    assert total["failed_exhausted"] == sum(not e.permanent for e in failed) > 0
    assert sum(total[c] for c in HISTOGRAM_COLUMNS) == total["latency_count"]
    assert total["delivered_retried"] == sum(
        1 for e in log if isinstance(e, Message.Delivered) and e.attempt > 1
    )
    assert len({key[0] for key in hourly}) >= 6  # several hours
    assert set(COUNTER_COLUMNS) <= set(total)

    assert nonzero(db.engine, failures_by_reason, ("day", "provider", "reason")) == reasons_of(log)
    assert {key[0] for key in reasons_of(log)} == {date(2024, 5, 1), date(2024, 5, 2)}
    assert len(backed_off) == sum(c.get("backed_off", 0) for c in reasons_of(log).values())


def test_messages_by_outcome_agree_with_each_messages_history(db: Db) -> None:
    big_history(db)
    db.runners(batch=37).catch_up()
    log = [event for _, event in db.store.iter_log()]

    with db.engine.connect() as connection:
        rows = connection.execute(select(delivery_stats_minutely)).all()
    found: Counter[tuple[Any, ...]] = Counter()
    for row in rows:
        for column in OUTCOME_COLUMNS:
            found[_norm(row.minute), row.provider, row.channel, column] += row._mapping[column]
    assert +found == outcomes_of(log)
    assert sum(found.values()) == 2000
    assert min(found.values()) >= 0


def test_a_rebuild_in_two_processes_gives_the_same_minute_rows(db: Db) -> None:
    big_history(db, count=300)
    db.runners(batch=37).catch_up()
    expected = snapshot(db.engine, delivery_stats_minutely)

    projection = DeliveryStatsMinutelyProjection()
    ShadowRebuild(db.store, db.engine, [projection], name=projection.name, batch=101, workers=2).run()

    assert snapshot(db.engine, delivery_stats_minutely) == expected


def outcomes_of(log: list[Any]) -> Counter[tuple[Any, ...]]:
    """Each message's outcome column, computed naively from the whole log, message by message."""
    cell: dict[Any, list[Any]] = {}
    for event in log:
        key = event.originator_id
        if isinstance(event, Message.Received):
            minute = event.timestamp.astimezone(UTC).replace(second=0, microsecond=0)
            cell[key] = [minute, event.provider or "", event.channel, "msg_pending"]
        elif isinstance(event, Message.Attempted):
            cell[key][1] = event.provider
        elif isinstance(event, Message.Delivered):
            cell[key][3] = "msg_delivered_retried" if event.attempt > 1 else "msg_delivered_first"
        elif isinstance(event, Message.Failed):
            cell[key][3] = "msg_failed_permanent" if event.permanent else "msg_failed_exhausted"
        elif isinstance(event, Message.RetryRequested):
            cell[key][3] = "msg_pending"
    return Counter(tuple(value) for value in cell.values())


def reasons_of(log: list[Any]) -> dict[tuple[Any, ...], dict[str, int]]:
    """``failures_by_reason`` computed naively from the whole log, event by event."""
    last_provider: dict[Any, str] = {}
    rows: dict[tuple[Any, ...], Counter[str]] = {}
    for event in log:
        if isinstance(event, Message.Attempted):
            last_provider[event.originator_id] = event.provider
        if isinstance(event, Message.Failed | Message.BackedOff):
            key = (event.timestamp.astimezone(UTC).date(), last_provider[event.originator_id], event.reason)
            row = rows.setdefault(key, Counter())
            if isinstance(event, Message.BackedOff):
                row["backed_off"] += 1
            else:
                row.update(["failed", "permanent" if event.permanent else "exhausted"])
    return {key: dict(row) for key, row in rows.items()}
