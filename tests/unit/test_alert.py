"""The Alert aggregate's episodes: pending for ``for``, firing once, resolved after ``clear_for``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.alert import DEFAULT_RULES, FIRING, PENDING, RESOLVED, Alert, AlertRule, Observation

T0 = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)
RULE = AlertRule("retries_overdue", threshold=120, for_=60, clear_for=30)


def seen(breached: bool, value: float = 200.0) -> Observation:
    return Observation(
        "retries_overdue", "all", value, breached, "a retry is 200 s overdue", {"queue": "send"}
    )


def run(alert: Alert, timeline: list[tuple[float, bool]], rule: AlertRule = RULE) -> list[str]:
    """Observe at each (seconds, breached); the event names recorded, in order."""
    clear_since: datetime | None = None
    for seconds, breached in timeline:
        now = T0 + timedelta(seconds=seconds)
        clear_since = None if breached else (clear_since or now)
        alert.observe(seen(breached), rule, now=now, clear_since=clear_since)
    return [type(e).__name__ for e in alert.collect_events()][1:]


def test_a_breach_is_pending_then_fires_once_after_for_then_resolves_after_clear_for() -> None:
    alert = Alert.open("retries_overdue", "all", now=T0)
    timeline = [
        (0, True),
        (30, True),
        (59, True),
        (60, True),
        (90, True),
        (100, False),
        (120, False),
        (130, False),
    ]
    assert run(alert, timeline) == ["AlertPending", "AlertRaised", "AlertResolved"]
    assert (alert.status, alert.episode, alert.value) == (RESOLVED, 1, 200.0)


def test_a_pending_alert_that_clears_before_for_never_fires() -> None:
    alert = Alert.open("retries_overdue", "all", now=T0)
    assert run(alert, [(0, True), (30, True), (40, False)]) == ["AlertPending", "AlertResolved"]
    assert not alert.collect_events()


def test_a_flap_shorter_than_clear_for_keeps_the_alert_firing() -> None:
    alert = Alert.open("retries_overdue", "all", now=T0)
    timeline = [(0, True), (60, True), (70, False), (80, True), (90, False), (110, False), (119, False)]
    assert run(alert, timeline) == ["AlertPending", "AlertRaised"]
    assert alert.status == FIRING


def test_without_for_it_fires_at_once_and_a_new_breach_is_a_new_episode() -> None:
    rule = AlertRule("provider_down", threshold=1, clear_for=0)
    alert = Alert.open("provider_down", "sms-eu", now=T0)
    names = run(alert, [(0, True), (5, False), (10, True)], rule)
    assert names == ["AlertRaised", "AlertResolved", "AlertRaised"]
    assert (alert.episode, alert.alert_id.endswith("-2"), alert.status) == (2, True, FIRING)


def test_an_acknowledgement_belongs_to_its_episode() -> None:
    rule = AlertRule("provider_down", threshold=1, clear_for=0)
    alert = Alert.open("provider_down", "sms-eu", now=T0)
    run(alert, [(0, True)], rule)
    alert.acknowledge("alice", now=T0)
    assert alert.acknowledged_by == "alice"
    run(alert, [(1, False), (2, True)], rule)
    assert alert.acknowledged_by is None and alert.status == FIRING


@given(st.lists(st.tuples(st.integers(1, 50), st.booleans()), max_size=60))
def test_any_timeline_follows_the_episode_rules(steps: list[tuple[int, bool]]) -> None:
    alert = Alert.open("retries_overdue", "all", now=T0)
    at, timeline = 0, []
    for gap, breached in steps:
        at += gap
        timeline.append((at, breached))
    names = run(alert, timeline)
    state = RESOLVED
    for name in names:  # pending → raised | resolved; raised → resolved; resolved → pending | raised
        allowed = {
            RESOLVED: {"AlertPending"},
            PENDING: {"AlertRaised", "AlertResolved"},
            FIRING: {"AlertResolved"},
        }
        assert name in allowed[state], (state, name, names)
        state = {"AlertPending": PENDING, "AlertRaised": FIRING, "AlertResolved": RESOLVED}[name]
    assert alert.status == state


def test_rules_take_their_table_with_for_spelt_as_in_prometheus() -> None:
    rule = DEFAULT_RULES["failures"].configured({"threshold": 5, "for": 30, "enabled": False})
    assert (rule.threshold, rule.for_, rule.enabled, rule.window) == (5, 30, False, 900.0)


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"treshold": 1}, "unknown setting 'treshold'"),
        ({"threshold": "1"}, "threshold has the wrong type"),
        ({"enabled": 1}, "enabled has the wrong type"),
        ({"for": True}, "for has the wrong type"),
        ({"severity": "page"}, "severity must be one of"),
        ({"window": -1}, "must be 0 to"),
        ({"clear_for": float("nan")}, "must be 0 to"),
        ({"window": 1e308}, "must be 0 to"),
    ],
)
def test_a_bad_rule_table_is_refused_naming_it(table: dict, error: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=error):
        DEFAULT_RULES["failures"].configured(table)
