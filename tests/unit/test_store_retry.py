"""retry_until: how the intake and the workers ride out a short store outage (fake clock, no sleeps)."""

import pytest

from domain.ports import MessageNotFoundError, StoreUnavailableError
from smeg_actors.actors.store_retry import retry_until
from tests.fakes import FakeClock


def test_retry_until_gives_up_after_the_grace_and_re_raises_the_last_error():
    # Given an operation that always fails
    clock = FakeClock(0.0)
    errors: list[StoreUnavailableError] = []
    retried: list[float] = []

    def operation() -> None:
        errors.append(StoreUnavailableError(f"down #{len(errors)}"))
        raise errors[-1]

    # When
    with pytest.raises(StoreUnavailableError) as failure:
        retry_until(
            operation,
            grace=1.0,
            on_retry=lambda _e, delay: retried.append(delay),
            sleep=clock.sleep,
            clock=clock,
        )

    # Then 0.1 + 0.2 + 0.4 = 0.7 s waited; another 0.8 s would pass the 1 s grace
    assert failure.value is errors[-1]
    assert len(errors) == 4
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4])
    assert retried == clock.sleeps
    assert clock.now <= 1.0


def test_retry_until_returns_the_result_once_the_operation_succeeds():
    clock = FakeClock(0.0)
    results = iter([StoreUnavailableError("down"), StoreUnavailableError("down"), "ok"])

    def operation() -> str:
        result = next(results)
        if isinstance(result, Exception):
            raise result
        return result

    assert retry_until(operation, grace=10, sleep=clock.sleep, clock=clock) == "ok"
    assert clock.sleeps == pytest.approx([0.1, 0.2])


def test_retry_until_doubles_the_wait_up_to_five_seconds():
    clock = FakeClock(0.0)

    def operation() -> None:
        raise StoreUnavailableError("down")

    with pytest.raises(StoreUnavailableError):
        retry_until(operation, grace=60, sleep=clock.sleep, clock=clock)

    assert clock.sleeps[:7] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0])
    assert max(clock.sleeps) == 5.0
    assert clock.now <= 60


def test_retry_until_with_no_grace_tries_once():
    clock = FakeClock(0.0)
    calls: list[int] = []

    def operation() -> None:
        calls.append(1)
        raise StoreUnavailableError("down")

    with pytest.raises(StoreUnavailableError):
        retry_until(operation, grace=0, sleep=clock.sleep, clock=clock)

    assert calls == [1]
    assert clock.sleeps == []


def test_retry_until_does_not_retry_other_errors():
    clock = FakeClock(0.0)
    calls: list[int] = []

    def operation() -> None:
        calls.append(1)
        raise MessageNotFoundError("no message")

    with pytest.raises(MessageNotFoundError):
        retry_until(operation, grace=60, sleep=clock.sleep, clock=clock)

    assert calls == [1]
