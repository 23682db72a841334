"""The routing rules: pinned, weighted, fallbacks, failover after failures, holds."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.backoff import BackoffPolicy
from domain.message import INTERRUPTED, Message
from domain.ports import Hold, Trial
from domain.routing import Admission, Route, RoutingPolicy

NOW = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
KEY = UUID(int=7)


def gate(held: dict[str, Hold] | None = None, trial: set[str] | None = None):  # type: ignore[no-untyped-def]
    asked: list[str] = []

    def admit(name: str) -> Admission:
        asked.append(name)
        if held and name in held:
            return held[name]
        return Trial() if trial and name in trial else None

    admit.asked = asked  # type: ignore[attr-defined]
    return admit


def hold(seconds: float) -> Hold:
    return Hold(NOW + timedelta(seconds=seconds), "circuit open")


POLICY = RoutingPolicy(
    "a",
    frozenset({"a", "b", "c"}),
    fallbacks={"a": ("b", "c"), "b": ("c",)},
    routes={"sms": Route((("a", 80), ("b", 20)))},
)


def choose(policy: RoutingPolicy = POLICY, **kw):  # type: ignore[no-untyped-def]
    args = {"pinned": None, "channel": "im", "key": KEY, "failures": {}, "admit": gate()} | kw
    return policy.choose(**args)


def test_the_default_provider_takes_a_message_without_route_or_pin() -> None:
    assert choose().provider == "a"


def test_a_pinned_provider_is_never_moved_even_when_held() -> None:
    admit = gate(held={"c": hold(30)})
    choice = choose(pinned="c", admit=admit, failures={"c": 5})
    assert (choice.provider, choice.admission) == ("c", hold(30))
    assert admit.asked == ["c"]


def test_an_unknown_pinned_provider_falls_back_to_the_route() -> None:
    assert choose(pinned="zzz").provider == "a"


def test_an_open_primary_moves_the_message_to_its_first_healthy_fallback() -> None:
    assert choose(admit=gate(held={"a": hold(30)})).provider == "b"
    assert choose(admit=gate(held={"a": hold(30), "b": hold(10)})).provider == "c"


def test_after_failover_after_transient_failures_the_next_provider_is_tried() -> None:
    assert choose(failures={"a": 1}).provider == "a"
    assert choose(failures={"a": 2}).provider == "b"
    assert choose(failures={"a": 2, "b": 2}).provider == "c"


def test_when_every_candidate_is_spent_the_least_failed_healthy_one_is_tried_again() -> None:
    assert choose(failures={"a": 4, "b": 2, "c": 3}).provider == "b"
    assert choose(failures={"a": 4, "b": 2, "c": 3}, admit=gate(held={"b": hold(5)})).provider == "c"


def test_when_no_candidate_takes_attempts_the_message_waits_for_the_soonest() -> None:
    choice = choose(admit=gate(held={"a": hold(30), "b": hold(5), "c": hold(60)}))
    assert (choice.provider, choice.admission) == ("b", hold(5))


def test_a_half_open_primary_takes_the_message_as_a_trial() -> None:
    choice = choose(admit=gate(trial={"a"}))
    assert choice == type(choice)("a", Trial())


def test_weights_split_messages_and_each_message_keeps_its_primary() -> None:
    keys = [uuid4() for _ in range(4000)]
    picks = Counter(choose(channel="sms", key=key).provider for key in keys)
    assert 0.77 < picks["a"] / len(keys) < 0.83
    assert picks["a"] + picks["b"] == len(keys)
    assert all(
        choose(channel="sms", key=k).provider == choose(channel="sms", key=k).provider for k in keys[:50]
    )


def test_a_weighted_route_skips_a_held_provider_for_the_other_weighted_one() -> None:
    admit = gate(held={"a": hold(30)})
    assert {choose(channel="sms", key=uuid4(), admit=admit).provider for _ in range(50)} == {"b"}


@given(
    weights=st.lists(st.integers(0, 50), min_size=1, max_size=5).filter(lambda w: sum(w) > 0),
    key=st.integers(0, 2**128 - 1),
)
def test_a_route_order_names_every_weighted_provider_once_its_pick_first(
    weights: list[int], key: int
) -> None:
    route = Route(tuple((f"p{i}", w) for i, w in enumerate(weights)))
    order = route.order(key)
    assert sorted(order) == sorted(f"p{i}" for i, w in enumerate(weights) if w > 0)
    assert dict(route.weights)[order[0]] > 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"fallbacks": {"a": ("z",)}}, "fallback 'z'"),
        ({"fallbacks": {"a": ("a",)}}, "fallback 'a'"),
        ({"routes": {"sms": Route((("z", 1),))}}, "route sms"),
        ({"failover_after": 0}, "failover_after"),
    ],
)
def test_bad_routing_settings_are_refused_naming_them(kwargs: dict, error: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=error):
        RoutingPolicy("a", frozenset({"a", "b"}), **kwargs)


@pytest.mark.parametrize("weights", [(), (("a", -1),), (("a", 0), ("b", 0))])
def test_bad_weights_are_refused(weights: tuple) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match="route"):
        Route(weights)


def _attempted(message: Message, provider: str, *, trial: bool = False) -> None:
    message.start_attempt(provider, now=NOW, trial=trial)


def test_a_message_counts_its_transient_failures_by_provider_per_cycle() -> None:
    policy = BackoffPolicy(initial=0, max_attempts=10)
    message = Message.receive(
        message_id="m", channel="sms", to="+15550000000", body="x", correlation_id="c", now=NOW
    )
    for provider, trial in (("a", False), ("a", False), ("b", True), ("b", False)):
        _attempted(message, provider, trial=trial)
        message.record_transient_failure("503", error="ProviderUnavailableError", policy=policy, now=NOW)
    assert message.failures == {"a": 2, "b": 1}  # the failed trial is not counted
    _attempted(message, "b")
    message.record_interruption(policy=policy, now=NOW)
    assert message.last_error == INTERRUPTED and message.failures == {"a": 2, "b": 1}
    message.start_attempt("b", now=NOW)
    message.record_permanent_failure("400", error="Rejected", now=NOW)
    message.request_retry("ops", now=NOW)
    assert message.failures == {}


def test_a_default_provider_that_is_not_configured_is_refused() -> None:
    with pytest.raises(ValueError, match="default provider 'z'"):
        RoutingPolicy("z", frozenset({"a"}))
