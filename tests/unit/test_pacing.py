"""The pace rules: rate-limit share, tickets in order, ramp after close, AIMD on 429."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.pacing import MAX_PAUSE, MIN_RATE, RAMP_RATE, Pace


def send_for(pace: Pace, seconds: float, *, step: float = 0.01, start: float = 100.0) -> list[float]:
    """Ask for a slot every ``step`` s with fresh keys and no backlog: when sends went out."""
    sent, now, key = [], start, 0
    waiting: dict[int, float] = {}
    while now < start + seconds:
        for k, at in list(waiting.items()):
            if at <= now and pace.admit(k, now) == 0.0:
                sent.append(now)
                del waiting[k]
        key += 1
        wait = pace.admit(key, now)
        if wait == 0.0:
            sent.append(now)
        else:
            waiting[key] = now + wait
        now += step
    return sent


def test_no_limit_sends_everything_at_once() -> None:
    pace = Pace()
    assert all(pace.admit(i, 5.0) == 0.0 for i in range(1000))


@pytest.mark.parametrize(("limit", "share"), [(50.0, 1.0), (50.0, 0.5), (7.0, 1.0)])
def test_a_rate_limit_share_holds_over_time(limit: float, share: float) -> None:
    pace = Pace(limit=limit, share=share)
    sent = send_for(pace, 20.0)
    measured = len([t for t in sent if t >= 105.0]) / 15.0
    assert measured == pytest.approx(limit * share, rel=0.05)


def test_tickets_are_honoured_in_the_order_they_were_given() -> None:
    pace = Pace(limit=10.0)
    waits = [pace.admit(key, 0.0) for key in "abcde"]
    assert waits[0] == 0.0 and waits[1:] == sorted(waits[1:]) and waits[-1] == pytest.approx(0.4)
    assert pace.admit("z", 0.0) == pytest.approx(0.5)  # a newcomer queues behind the tickets
    assert pace.admit("c", 0.1) == pytest.approx(0.1)  # came back early: still waiting
    assert pace.admit("c", 0.2) == 0.0  # its slot
    assert pace.admit("c", 0.2) > 0  # a ticket is used once


def test_after_a_close_the_pace_ramps_from_a_tenth_doubling_every_ten_seconds() -> None:
    pace = Pace(limit=100.0)
    pace.closed(0.0)
    assert [pace.rate(t) for t in (0.0, 9.9, 10.0, 20.0, 30.0, 39.0)] == [10, 10, 20, 40, 80, 80]
    assert pace.rate(40.0) == 100.0 and pace.ramp_from is None


def test_without_a_limit_the_ramp_climbs_to_the_ramp_rate_then_lifts() -> None:
    pace = Pace()
    pace.closed(0.0)
    assert pace.rate(0.0) == RAMP_RATE / 10
    assert pace.rate(41.0) is None


def test_a_ramp_shares_the_limit_between_processes() -> None:
    pace = Pace(limit=100.0, share=0.25)
    pace.closed(0.0)
    assert pace.rate(0.0) == pytest.approx(2.5)


def test_a_429_halves_the_pace_once_per_second_then_it_grows_back_and_lifts() -> None:
    pace = Pace(limit=40.0)
    pace.throttled(10.0, None)
    assert pace.rate(10.0) == 20.0
    pace.throttled(10.5, None)  # same burst
    assert pace.rate(10.5) == pytest.approx(20.0 + 0.5)
    pace.throttled(11.5, None)  # a second later: halve again
    assert pace.rate(11.5) == pytest.approx(10.75)
    assert pace.rate(20.0) > pace.rate(12.0)  # type: ignore[operator]
    assert pace.rate(60.0) == 40.0 and pace.adaptive is None


def test_a_429_without_a_limit_halves_the_observed_pace() -> None:
    pace = Pace()
    for i in range(300):
        pace.admit(i, 10.0 + i / 300)  # 300 in second 10
    pace.throttled(11.0, None)
    assert pace.rate(11.0) == pytest.approx(150.0)
    assert pace.rate(11.0 + 61) is None  # grown past twice the pace it was throttled at


def test_retry_after_pauses_sending_and_is_capped() -> None:
    pace = Pace()
    pace.throttled(0.0, 3.0)
    assert pace.admit("a", 0.0) == pytest.approx(3.0)
    assert pace.admit("a", 3.0) == 0.0
    pace.throttled(10.0, 10_000.0)
    assert pace.admit("b", 10.0) == pytest.approx(MAX_PAUSE)


@settings(max_examples=200)
@given(
    limit=st.floats(1.0, 500.0),
    share=st.floats(0.05, 1.0),
    throttles=st.lists(st.floats(0.0, 30.0), max_size=5),
)
def test_the_pace_is_never_below_the_floor_nor_above_the_share(
    limit: float, share: float, throttles: list[float]
) -> None:
    pace = Pace(limit=limit, share=share)
    for at in sorted(throttles):
        pace.throttled(at, None)
    for t in (0.0, 5.0, 15.0, 31.0, 100.0):
        rate = pace.rate(t)
        assert rate is not None and min(MIN_RATE, limit * share) <= rate <= limit * share + 1e-9


def test_slots_promised_during_a_ramp_are_spaced_at_the_pace_of_their_time() -> None:
    pace = Pace()
    pace.closed(0.0)
    waits = [pace.admit(key, 0.0) for key in range(1000)]
    assert waits[100] == pytest.approx(10.0, abs=0.1)  # 100 at 10/s
    assert waits[300] == pytest.approx(20.0, abs=0.1)  # then 200 at 20/s
    assert max(waits) < 36.0  # 1000 held messages drained in about 34 s, not 100 s at 10/s


def test_a_ramp_long_past_is_no_limit_and_never_overflows() -> None:
    pace = Pace()
    pace.closed(0.0)
    assert pace.rate_at(20_000.0) is None
    assert pace.admit("k", 1e9) == 0.0


def test_a_pause_gives_up_promised_slots_so_none_is_sent_inside_it() -> None:
    pace = Pace(limit=10.0)
    for key in range(50):
        pace.admit(key, 0.0)
    pace.throttled(0.5, 60.0)
    assert pace.admit(20, 2.0) == pytest.approx(58.5)  # its old slot (2.0) is inside the pause
    assert pace.admit(21, 2.0) > pace.admit(20, 2.0)  # asked again: slots after the pause, in order


def test_after_a_long_retry_after_the_queue_is_spaced_not_released_at_once() -> None:
    pace = Pace()
    for i in range(100):
        pace.admit(i, 10.0 + i / 100)  # 100/s observed
    pace.throttled(11.0, 60.0)
    waits = [pace.admit(key, 11.0) for key in range(1000, 1005)]
    assert waits[0] == pytest.approx(60.0)
    assert all(
        b - a == pytest.approx(1 / 50, rel=0.05) for a, b in itertools.pairwise(waits)
    )  # half the pace
