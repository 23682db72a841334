"""BackoffPolicy and the transient/permanent status classification."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.backoff import MAX_RETRY_AFTER, BackoffPolicy, is_transient_status

# --- delays ---------------------------------------------------------------------------------


def test_default_policy_is_60s_times_3_capped_at_an_hour_over_5_attempts_without_jitter():
    policy = BackoffPolicy()

    assert policy.as_dict() == {
        "initial": 60.0,
        "factor": 3.0,
        "max_delay": 3600.0,
        "max_attempts": 5,
        "jitter": 0.0,
    }


def test_default_delays_grow_60_180_540_1620_then_hit_the_3600_cap():
    policy = BackoffPolicy()

    delays = [policy.delay(n) for n in range(1, 7)]

    assert delays == [60.0, 180.0, 540.0, 1620.0, 3600.0, 3600.0]


def test_delay_never_exceeds_the_cap_however_many_attempts():
    policy = BackoffPolicy(initial=10, factor=2, max_delay=100, max_attempts=50)

    assert [policy.delay(n) for n in (1, 4, 5, 10, 50)] == [10.0, 80.0, 100.0, 100.0, 100.0]


def test_cap_below_initial_caps_the_very_first_delay():
    assert BackoffPolicy(initial=60, max_delay=30).delay(1) == 30.0


def test_zero_initial_delay_means_immediate_retries():
    assert BackoffPolicy(initial=0).delay(3) == 0.0


def test_delay_is_a_float():
    assert isinstance(BackoffPolicy(initial=1, factor=2, max_delay=10).delay(2), float)


# --- Retry-After ----------------------------------------------------------------------------


def test_retry_after_longer_than_the_computed_delay_raises_it():
    assert BackoffPolicy().delay(1, retry_after=90) == 90.0


def test_retry_after_raises_the_delay_even_above_the_cap():
    assert BackoffPolicy(max_delay=3600).delay(5, retry_after=7200) == 7200.0


def test_retry_after_shorter_than_the_computed_delay_never_lowers_it():
    assert BackoffPolicy().delay(2, retry_after=5) == 180.0


def test_retry_after_of_none_leaves_the_delay_alone():
    assert BackoffPolicy().delay(3, retry_after=None) == 540.0


def test_retry_after_is_a_floor_for_the_jittered_delay_too():
    policy = BackoffPolicy(initial=100, jitter=0.5)

    delays = [policy.delay(1, retry_after=140, rng=random.Random(seed)) for seed in range(200)]

    assert min(delays) >= 140.0
    assert max(delays) <= 150.0


# --- jitter ---------------------------------------------------------------------------------


@pytest.mark.parametrize("jitter", [0.1, 0.25, 0.5, 0.99])
def test_jitter_keeps_the_delay_within_plus_or_minus_its_fraction(jitter):
    policy = BackoffPolicy(initial=100, factor=2, max_delay=10_000, jitter=jitter)

    for seed in range(300):
        delay = policy.delay(3, rng=random.Random(seed))

        assert 400 * (1 - jitter) <= delay <= 400 * (1 + jitter)


def test_jitter_actually_spreads_the_delays():
    policy = BackoffPolicy(initial=100, jitter=0.2)

    delays = {policy.delay(1, rng=random.Random(seed)) for seed in range(50)}

    assert len(delays) > 40
    assert min(delays) < 95 < 105 < max(delays)


def test_jitter_with_the_same_seed_gives_the_same_delay():
    policy = BackoffPolicy(jitter=0.3)

    assert policy.delay(2, rng=random.Random(7)) == policy.delay(2, rng=random.Random(7))


def test_jitter_spreads_the_capped_delay_too():
    policy = BackoffPolicy(initial=60, max_delay=100, jitter=0.1)

    delays = [policy.delay(10, rng=random.Random(seed)) for seed in range(200)]

    assert all(90 <= d <= 110 for d in delays)
    assert max(delays) > 100


def test_zero_jitter_disables_randomness():
    policy = BackoffPolicy(jitter=0.0)

    delays = {policy.delay(2, rng=random.Random(seed)) for seed in range(50)}

    assert delays == {180.0}


def test_zero_jitter_does_not_draw_from_the_random_source():
    # Given
    rng = random.Random(1)
    state = rng.getstate()

    # When
    BackoffPolicy().delay(4, rng=rng)

    # Then
    assert rng.getstate() == state


# --- exhaustion -----------------------------------------------------------------------------


def test_attempts_before_max_attempts_are_not_exhausted():
    policy = BackoffPolicy(max_attempts=5)

    assert [policy.exhausted(n) for n in range(1, 5)] == [False] * 4


def test_the_max_attempts_th_attempt_exhausts_the_cycle():
    assert BackoffPolicy(max_attempts=5).exhausted(5)


def test_attempts_past_max_attempts_stay_exhausted():
    assert BackoffPolicy(max_attempts=5).exhausted(6)


def test_a_single_attempt_policy_is_exhausted_after_the_first_attempt():
    assert BackoffPolicy(max_attempts=1).exhausted(1)


# --- invalid parameters ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("initial", -0.001),
        ("factor", 0.999),
        ("factor", 0),
        ("max_delay", -1),
        ("max_attempts", 0),
        ("max_attempts", -3),
        ("jitter", -0.01),
        ("jitter", 1.0),
        ("jitter", 1.5),
    ],
)
def test_invalid_parameter_is_refused_with_value_error_naming_it(field, value):
    with pytest.raises(ValueError, match=field):
        BackoffPolicy(**{field: value})


@pytest.mark.parametrize("field", ["initial", "factor", "max_delay", "jitter"])
def test_nan_parameter_is_refused_with_value_error(field):
    """Every comparison with NaN is false, so the range checks alone let it through."""
    with pytest.raises(ValueError, match=field):
        BackoffPolicy(**{field: math.nan})


@pytest.mark.parametrize("attempt", [0, -1])
def test_delay_of_attempt_below_one_is_refused(attempt):
    with pytest.raises(ValueError, match="1-based"):
        BackoffPolicy().delay(attempt)


def test_boundary_values_are_accepted():
    policy = BackoffPolicy(initial=0, factor=1, max_delay=0, max_attempts=1, jitter=0.0)

    assert policy.delay(1) == 0.0


def test_policy_is_immutable():
    policy = BackoffPolicy()

    with pytest.raises(AttributeError):
        policy.initial = 1  # type: ignore[misc]


# --- status classification ------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_timeouts_throttling_and_server_errors_are_transient(status):
    assert is_transient_status(status)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 400, 401, 403, 404, 409, 410, 413, 422, 499, 600])
def test_other_client_errors_and_successes_are_not_transient(status):
    assert not is_transient_status(status)


# --- properties over the whole parameter space ----------------------------------------------


def _floats(low: float, high: float, **kwargs: bool) -> st.SearchStrategy[float]:
    # No subnormals: their rounding makes repeated products differ from the closed form.
    return st.floats(low, high, allow_nan=False, allow_subnormal=False, **kwargs)


policies = st.builds(
    BackoffPolicy,
    initial=_floats(0, 1e9),
    factor=_floats(1, 1e3),
    max_delay=_floats(0, 1e9),
    max_attempts=st.integers(min_value=1, max_value=50),
    jitter=_floats(0, 1, exclude_max=True),
)
attempts = st.integers(min_value=1, max_value=50)
retry_afters = st.none() | _floats(0, 1e9)


def _unjittered(policy: BackoffPolicy, attempt: int) -> float:
    return min(policy.initial * policy.factor ** (attempt - 1), policy.max_delay)


@given(policy=policies, attempt=attempts, retry_after=retry_afters, seed=st.integers(0, 2**32))
def test_any_delay_lies_between_zero_and_the_jittered_cap_or_retry_after(policy, attempt, retry_after, seed):
    delay = policy.delay(attempt, retry_after=retry_after, rng=random.Random(seed))

    upper = max(policy.max_delay * (1 + policy.jitter), min(retry_after or 0.0, MAX_RETRY_AFTER))
    assert 0.0 <= delay <= upper * (1 + 1e-12)
    if retry_after is not None:
        assert delay >= min(retry_after, MAX_RETRY_AFTER)


@given(policy=policies, attempt=attempts, seed=st.integers(0, 2**32))
def test_any_jittered_delay_lies_within_the_jitter_fraction_of_the_unjittered_delay(policy, attempt, seed):
    base = _unjittered(policy, attempt)

    delay = policy.delay(attempt, rng=random.Random(seed))

    assert base * (1 - policy.jitter) * (1 - 1e-9) <= delay <= base * (1 + policy.jitter) * (1 + 1e-9)


@given(policy=policies, attempt=attempts)
def test_without_jitter_delay_is_min_of_initial_times_factor_power_and_cap(policy, attempt):
    policy = BackoffPolicy(**{**policy.as_dict(), "jitter": 0.0})

    assert policy.delay(attempt) == pytest.approx(_unjittered(policy, attempt), rel=1e-9)


@given(policy=policies, attempt=st.integers(min_value=1, max_value=49))
def test_without_jitter_delay_never_decreases_from_one_attempt_to_the_next(policy, attempt):
    policy = BackoffPolicy(**{**policy.as_dict(), "jitter": 0.0})

    assert policy.delay(attempt) <= policy.delay(attempt + 1)


@given(policy=policies, attempt=attempts)
def test_exhausted_exactly_from_max_attempts_on(policy, attempt):
    assert policy.exhausted(attempt) == (attempt >= policy.max_attempts)


@given(status=st.integers(min_value=100, max_value=599))
def test_transient_statuses_are_exactly_408_425_429_and_5xx(status):
    assert is_transient_status(status) == (status in (408, 425, 429) or status >= 500)


def test_a_retry_after_beyond_a_day_is_capped_at_a_day():
    # A bogus year-long hint must not park a message for a year.
    assert BackoffPolicy().delay(1, retry_after=365 * 86_400) == MAX_RETRY_AFTER
