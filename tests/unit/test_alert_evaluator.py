"""The alert evaluator: one alert per rule and key, raised once after ``for``, resolved once
healed, each sink told of both; two processes evaluating at once record each transition once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from domain.alert import FIRING, RESOLVED, Alert, AlertRule, Observation
from smeg_actors.actors.alerts import AlertEvaluatorActor
from tests.fakes import FakeClock, InMemoryAlerts

T0 = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)
RULES = {
    "provider_down": AlertRule("provider_down", threshold=60, for_=0, clear_for=30, severity="critical"),
    "retries_overdue": AlertRule("retries_overdue", threshold=120, for_=60, clear_for=60),
}


class Sink:
    def __init__(self, name: str = "hook", fail: bool = False) -> None:
        self.name, self.fail = name, fail
        self.told: list[tuple[str, str, str]] = []

    def notify(self, alert: Alert) -> None:
        self.told.append((alert.rule, alert.key, alert.status))
        if self.fail:
            raise ConnectionError("refused")


class World:
    """What the sensors see: provider a down since ``down_at`` (None: up), a retry ``late`` s late."""

    def __init__(self) -> None:
        self.down_at: datetime | None = None
        self.late = 0.0

    def provider_down(self, now: datetime) -> list[Observation]:
        value = (now - self.down_at).total_seconds() if self.down_at else 0.0
        return [
            Observation("provider_down", "a", value, value >= 60, f"a down {value:.0f} s", {"provider": "a"})
        ]

    def retries_overdue(self, now: datetime) -> list[Observation]:
        return [Observation("retries_overdue", "all", self.late, self.late >= 120, f"{self.late:.0f} s late")]


def evaluator(repository: InMemoryAlerts, world: World, clock: FakeClock[datetime], *sinks: Any) -> Any:
    actor = AlertEvaluatorActor(
        "alerts",
        None,
        repository=repository,
        rules=RULES,
        sensors={"provider_down": world.provider_down, "retries_overdue": world.retries_overdue},
        sinks=list(sinks),
        clock=clock,
    )
    return actor


def run_for(actors: list[Any], clock: FakeClock[datetime], seconds: int, step: int = 5) -> None:
    for _ in range(seconds // step):
        clock.now += timedelta(seconds=step)
        for actor in actors:
            actor.evaluate()


def test_each_rule_raises_one_alert_after_its_for_and_resolves_once_healed() -> None:
    repository, world, clock, sink = InMemoryAlerts(), World(), FakeClock(T0), Sink()
    actor = evaluator(repository, world, clock, sink)
    run_for([actor], clock, 60)
    assert repository.events == {}  # a healthy system: nothing recorded at all

    world.down_at, world.late = clock.now, 200.0
    run_for([actor], clock, 55)
    assert repository.names("provider_down", "a") == []  # 55 s < threshold 60
    assert repository.names("retries_overdue", "all") == ["Opened", "AlertPending"]
    run_for([actor], clock, 10)  # provider down 65 s; overdue for 65 s (> for 60)
    assert repository.names("provider_down", "a")[-1] == "AlertNotified"
    assert repository.get("provider_down", "a").status == FIRING  # type: ignore[union-attr]
    assert repository.get("retries_overdue", "all").status == FIRING  # type: ignore[union-attr]
    run_for([actor], clock, 120)  # still broken: no second raise
    assert repository.names("provider_down", "a").count("AlertRaised") == 1

    world.down_at, world.late = None, 0.0
    run_for([actor], clock, 25)
    assert repository.get("provider_down", "a").status == FIRING  # type: ignore[union-attr]  # < clear_for 30
    run_for([actor], clock, 60)
    assert repository.get("provider_down", "a").status == RESOLVED  # type: ignore[union-attr]
    assert repository.get("retries_overdue", "all").status == RESOLVED  # type: ignore[union-attr]
    assert sorted(sink.told) == sorted(
        [
            ("provider_down", "a", FIRING),
            ("provider_down", "a", RESOLVED),
            ("retries_overdue", "all", FIRING),
            ("retries_overdue", "all", RESOLVED),
        ]
    )


def test_two_processes_evaluating_record_each_transition_once_and_tell_once() -> None:
    repository, world, clock = InMemoryAlerts(), World(), FakeClock(T0)
    sinks = [Sink(), Sink()]
    actors = [evaluator(repository, world, clock, sinks[0]), evaluator(repository, world, clock, sinks[1])]
    world.down_at = clock.now
    run_for(actors, clock, 70)
    world.down_at = None
    run_for(actors, clock, 40)
    names = repository.names("provider_down", "a")
    assert names.count("AlertRaised") == 1 and names.count("AlertResolved") == 1
    assert sorted(sinks[0].told + sinks[1].told) == [
        ("provider_down", "a", FIRING),
        ("provider_down", "a", RESOLVED),
    ]


def test_a_failing_sink_is_recorded_and_the_others_are_still_told() -> None:
    repository, world, clock = InMemoryAlerts(), World(), FakeClock(T0)
    broken, good = Sink("broken", fail=True), Sink("good")
    actor = evaluator(repository, world, clock, broken, good)
    world.down_at = clock.now
    run_for([actor], clock, 65)
    alert = repository.get("provider_down", "a")
    assert alert is not None and alert.notified == {"broken": False, "good": True}
    assert good.told == [("provider_down", "a", FIRING)]


def test_a_sink_that_failed_hears_of_the_change_once_it_is_back_and_not_of_stale_ones() -> None:
    repository, world, clock, tick = InMemoryAlerts(), World(), FakeClock(T0), FakeClock(0.0)
    flaky = Sink("flaky", fail=True)
    actor = AlertEvaluatorActor(
        "alerts",
        None,
        repository=repository,
        rules=RULES,
        sensors={"provider_down": world.provider_down},
        sinks=[flaky],
        clock=clock,
        monotonic=tick,
    )

    def run(seconds: int) -> None:
        for _ in range(seconds // 5):
            clock.now += timedelta(seconds=5)
            tick.now += 5
            actor.evaluate()

    world.down_at = clock.now
    run(65)  # fired; the sink failed
    assert flaky.told == [("provider_down", "a", FIRING)]
    run(60)  # tried again a minute later, failing again
    assert flaky.told == [("provider_down", "a", FIRING)] * 2
    flaky.fail = False
    run(60)
    assert flaky.told == [("provider_down", "a", FIRING)] * 3
    assert repository.get("provider_down", "a").notified == {"flaky": True}  # type: ignore[union-attr]
    run(120)
    assert len(flaky.told) == 3  # heard: not told again
    flaky.fail = True
    world.down_at = None
    run(35)  # resolved; the sink failed to hear it
    assert flaky.told[-1] == ("provider_down", "a", RESOLVED)
    # Before the resolve is tried again, another process records (and tells) a new episode
    world.down_at = clock.now - timedelta(hours=1)
    other = evaluator(repository, world, clock)
    other.evaluate()
    assert repository.get("provider_down", "a").episode == 2  # type: ignore[union-attr]
    flaky.fail = False
    run(60)
    assert flaky.told[4:] == []  # the stale resolve is not re-sent, nor the other's change


def test_a_restarted_evaluator_resolves_what_an_earlier_one_left_firing() -> None:
    repository, world, clock = InMemoryAlerts(), World(), FakeClock(T0)
    first = evaluator(repository, world, clock)
    world.down_at = clock.now
    run_for([first], clock, 65)
    world.down_at = None
    second = evaluator(repository, world, clock)  # a new process: it knows nothing of it
    run_for([second], clock, 40)
    assert repository.get("provider_down", "a").status == RESOLVED  # type: ignore[union-attr]


def test_a_sensor_that_fails_skips_its_rule_only() -> None:
    repository, world, clock = InMemoryAlerts(), World(), FakeClock(T0)

    def broken(now: datetime) -> list[Observation]:
        raise ConnectionError("broker down")

    actor = AlertEvaluatorActor(
        "alerts",
        None,
        repository=repository,
        rules=RULES,
        sensors={"provider_down": world.provider_down, "retries_overdue": broken},
        sinks=[],
        clock=clock,
    )
    world.down_at = clock.now
    run_for([actor], clock, 65)
    assert repository.get("provider_down", "a").status == FIRING  # type: ignore[union-attr]
    assert actor.failing == {"retries_overdue"}


def test_the_restart_storm_sensor_counts_this_process_s_restarts_within_its_window() -> None:
    from smeg_actors.actors.supervisor import RestartLog
    from smeg_actors.runtime.alerting import restart_storm

    log = RestartLog()
    sensor = restart_storm(AlertRule("restart_storm", threshold=3, window=60), log, process="h/1")
    assert sensor(T0)[0].breached is False
    now = time.monotonic()
    for at in (now - 120, now - 30, now - 20, now - 1):
        log.record(at)
    [seen] = sensor(T0)
    assert (seen.key, seen.value, seen.breached) == ("h/1", 3.0, True)


class Repeating(Sink):
    repeats = True


def test_an_open_alert_no_sensor_sees_any_more_is_resolved_after_a_rescan() -> None:
    repository, world, clock = InMemoryAlerts(), World(), FakeClock(T0)
    now = [0.0]
    first = evaluator(repository, world, clock)
    world.down_at = clock.now
    run_for([first], clock, 65)

    def nothing(_now: datetime) -> list[Observation]:
        return []  # the provider was removed from the configuration

    later = AlertEvaluatorActor(
        "alerts",
        None,
        repository=repository,
        rules=RULES,
        sensors={"provider_down": nothing},
        sinks=[],
        clock=clock,
        monotonic=lambda: now[0],
    )
    run_for([later], clock, 40)
    assert repository.get("provider_down", "a").status == RESOLVED  # type: ignore[union-attr]


def test_a_sensor_that_cannot_judge_leaves_the_alert_as_it_is() -> None:
    repository, world, clock = InMemoryAlerts(), World(), FakeClock(T0)
    actor = evaluator(repository, world, clock)
    world.down_at = clock.now
    run_for([actor], clock, 65)
    unknown = Observation("provider_down", "a", 0.0, None, "cannot tell yet")
    actor.sensors["provider_down"] = lambda _now: [unknown]
    run_for([actor], clock, 120)
    assert repository.get("provider_down", "a").status == FIRING  # type: ignore[union-attr]


def test_a_firing_alert_is_re_sent_to_a_sink_that_forgets_it() -> None:
    repository, world, clock = InMemoryAlerts(), World(), FakeClock(T0)
    mono = [0.0]
    forgetful, plain = Repeating("am"), Sink("hook")
    actor = AlertEvaluatorActor(
        "alerts",
        None,
        repository=repository,
        rules=RULES,
        sensors={"provider_down": world.provider_down},
        sinks=[forgetful, plain],
        clock=clock,
        monotonic=lambda: mono[0],
    )
    world.down_at = clock.now
    for _ in range(40):  # 200 s, the monotonic clock with it
        clock.now += timedelta(seconds=5)
        mono[0] += 5
        actor.evaluate()
    assert len(plain.told) == 1
    assert 3 <= len(forgetful.told) <= 4  # once when it fired, then every 60 s while firing


def test_the_backlog_sensor_judges_only_what_it_has_seen() -> None:
    from smeg_actors.runtime.alerting import BacklogAge

    class Depths:
        depth = 50

        def read(self) -> dict[str, int]:
            return {"send": self.depth}

    depths = Depths()
    sensor = BacklogAge(depths, AlertRule("backlog_growing", threshold=300))  # type: ignore[arg-type]
    assert sensor(T0)[0].breached is None  # started during a backlog: cannot tell its age
    assert sensor(T0 + timedelta(seconds=301))[0].breached is True  # 301 s it can vouch for
    depths.depth = 0
    assert sensor(T0 + timedelta(seconds=302))[0].breached is False
    depths.depth = 10
    assert sensor(T0 + timedelta(seconds=400))[0].breached is False


class Inhibited:
    """An evaluator with one inhibiting probe (``outage`` or ``paused``) whose answer is ``cause``
    while it holds a reason; ``run(s)`` evaluates every 5 s for ``s`` seconds."""

    def __init__(self, probe: str, reason: str) -> None:
        self.repository, self.world = InMemoryAlerts(), World()
        self.clock, self.tick = FakeClock(T0), FakeClock(0.0)
        self.cause = [reason]
        self.actor = AlertEvaluatorActor(
            "alerts",
            None,
            repository=self.repository,
            rules=RULES,
            sensors={
                "provider_down": self.world.provider_down,
                "retries_overdue": self.world.retries_overdue,
            },
            sinks=[],
            clock=self.clock,
            monotonic=self.tick,
            outage=self.reason if probe == "outage" else None,
            paused=self.reason if probe == "paused" else None,
        )

    def reason(self) -> str | None:
        return self.cause[0] if self.cause else None

    def run(self, seconds: int) -> None:
        for _ in range(seconds // 5):
            self.clock.now += timedelta(seconds=5)
            self.tick.now += 5
            self.actor.evaluate()


def test_while_the_store_or_broker_is_away_the_alerts_that_follow_from_it_are_held_back() -> None:
    given = Inhibited("outage", "store unavailable: OperationalError")
    repository, world, run = given.repository, given.world, given.run

    # When the store is away, retries overdue (they follow from it) and a provider down (they do not)
    world.down_at, world.late = given.clock.now, 200.0
    run(90)
    assert repository.get("retries_overdue", "all") is None  # held back
    assert repository.get("provider_down", "a").status == FIRING  # type: ignore[union-attr]
    given.cause.clear()  # the store answers again: still held back while the retries catch up
    run(55)
    assert repository.get("retries_overdue", "all") is None
    run(10)  # 60 s after the outage: the retries are still late, so the rule applies again
    assert repository.names("retries_overdue", "all") == ["Opened", "AlertPending"]
    run(60)
    assert repository.get("retries_overdue", "all").status == FIRING  # type: ignore[union-attr]


def test_while_an_operator_pauses_delivery_overdue_retries_do_not_fire_but_a_provider_down_does() -> None:
    given = Inhibited("paused", "delivery paused")
    repository, world, run = given.repository, given.world, given.run

    # When delivery is paused for longer than the retries may wait, and a provider goes down
    world.down_at, world.late = given.clock.now, 300.0
    run(600)
    # Then the paused retries raise nothing; the provider down fires (a pause does not explain it)
    assert repository.get("retries_overdue", "all") is None
    assert repository.get("provider_down", "a").status == FIRING  # type: ignore[union-attr]
    # And after the resume the retries have a minute to catch up, then the rule applies again
    given.cause.clear()
    run(55)
    assert repository.get("retries_overdue", "all") is None
    run(70)
    assert repository.names("retries_overdue", "all")[:2] == ["Opened", "AlertPending"]
