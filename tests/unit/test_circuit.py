"""The breaker's pure rules: the trip rule, the sliding window, the open period, the TOML table."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.circuit import CLOSED, OPEN, AttemptWindow, CircuitPolicy


def test_the_defaults_are_the_documented_ones() -> None:
    policy = CircuitPolicy()
    assert (policy.window, policy.activation_threshold, policy.trip_ratio) == (30.0, 20, 0.5)
    assert (policy.open_for, policy.max_open_for, policy.half_open_attempts) == (30.0, 600.0, 3)


def test_below_the_activation_threshold_no_ratio_trips() -> None:
    policy = CircuitPolicy(activation_threshold=20, trip_ratio=0.5)
    assert not policy.trips(attempts=19, failures=19)
    assert policy.trips(attempts=20, failures=10)
    assert not policy.trips(attempts=20, failures=9)


@given(attempts=st.integers(0, 500), failures=st.integers(0, 500), quarters=st.integers(1, 4))
def test_the_trip_rule_is_count_and_ratio(attempts: int, failures: int, quarters: int) -> None:
    failures = min(failures, attempts)
    policy = CircuitPolicy(activation_threshold=10, trip_ratio=quarters / 4)
    assert policy.trips(attempts, failures) == (attempts >= 10 and 4 * failures >= quarters * attempts)


def test_the_open_period_doubles_per_consecutive_reopen_up_to_the_cap() -> None:
    policy = CircuitPolicy(open_for=30, max_open_for=600)
    assert [policy.open_duration(n) for n in range(7)] == [30, 60, 120, 240, 480, 600, 600]
    assert policy.open_duration(10_000) == 600


def test_the_window_forgets_outcomes_older_than_its_length() -> None:
    window = AttemptWindow(30)
    window.record(0.0, transient_failure=True)
    window.record(10.0, transient_failure=False)
    window.record(20.0, transient_failure=True)
    assert window.counts(29.9) == (3, 2)
    assert window.counts(30.0) == (2, 1)  # the one at 0 s is 30 s old: out
    assert window.ratio(39.9) == pytest.approx(0.5)
    assert window.ratio(40.0) == 1.0  # only the failure at 20 s is left
    assert window.counts(50.0) == (0, 0) and window.ratio(50.0) == 0.0


@given(st.lists(st.tuples(st.floats(0, 1000), st.booleans()), max_size=60), st.floats(1, 100))
def test_the_window_counts_what_a_direct_count_counts(
    events: list[tuple[float, bool]], seconds: float
) -> None:
    window = AttemptWindow(seconds)
    events = sorted(events)
    for t, failed in events:
        window.record(t, transient_failure=failed)
    now = events[-1][0] if events else 0.0
    inside = [failed for t, failed in events if t > now - seconds]
    assert window.counts(now) == (len(inside), sum(inside))


def test_a_toml_table_becomes_a_policy_and_a_mistake_is_named() -> None:
    policy = CircuitPolicy.from_mapping({"window": 10, "trip_ratio": 0.25, "half_open_attempts": 1})
    assert (policy.window, policy.trip_ratio, policy.half_open_attempts) == (10, 0.25, 1)
    with pytest.raises(ValueError, match="unknown setting 'windw'"):
        CircuitPolicy.from_mapping({"windw": 10})
    with pytest.raises(ValueError, match="trip_ratio must be a number"):
        CircuitPolicy.from_mapping({"trip_ratio": "half"})
    with pytest.raises(ValueError, match=r"trip_ratio must be in \(0, 1\]"):
        CircuitPolicy.from_mapping({"trip_ratio": 1.5})
    with pytest.raises(ValueError, match="max_open_for >= open_for"):
        CircuitPolicy.from_mapping({"open_for": 60, "max_open_for": 30})
    with pytest.raises(ValueError, match="must be >= 1"):
        CircuitPolicy.from_mapping({"activation_threshold": 0})


def test_half_open_trials_decide_by_the_trip_ratio() -> None:
    policy = CircuitPolicy(trip_ratio=0.5, half_open_attempts=3)
    assert policy.trials_verdict(succeeded=0, failed=2) == OPEN  # a total outage: two trials suffice
    assert policy.trials_verdict(succeeded=2, failed=0) == CLOSED
    assert policy.trials_verdict(succeeded=1, failed=1) is None
    assert policy.trials_verdict(succeeded=2, failed=1) == CLOSED  # one unlucky trial is not an outage
    strict = CircuitPolicy(trip_ratio=0.5, half_open_attempts=2)
    assert strict.trials_verdict(succeeded=0, failed=1) == OPEN
    assert strict.trials_verdict(succeeded=1, failed=0) is None


@given(
    trials=st.lists(st.booleans(), min_size=12, max_size=12), n=st.integers(1, 12), quarters=st.integers(1, 4)
)
def test_trials_reach_a_verdict_within_half_open_attempts_and_it_is_the_trip_rule(
    trials: list[bool], n: int, quarters: int
) -> None:
    policy = CircuitPolicy(trip_ratio=quarters / 4, half_open_attempts=n)
    succeeded = failed = 0
    for failure in trials[:n]:
        failed, succeeded = failed + failure, succeeded + (not failure)
        verdict = policy.trials_verdict(succeeded, failed)
        if verdict is not None:
            break
    assert verdict is not None  # never more trials than half_open_attempts
    limit = max(1, -(-quarters * n // 4))  # failures that make the trials trip: ceil(ratio × n)
    assert (verdict == OPEN) == (failed >= limit)
