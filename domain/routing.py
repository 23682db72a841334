"""Which provider a message's next attempt goes to: pure rules over its history and the gate.

A request that pins a provider is never moved. Otherwise its channel's route (weights, e.g. 80/20)
picks a primary, the same one for a message every time (by its id), then the other weighted
providers and each one's ``fallback`` list, in order. A candidate is skipped while it takes no
attempts (its circuit is open, or it is disabled) and once it has failed this message
transiently ``failover_after`` times in this cycle (a wait for a slot of its pace is no reason to
move: the message waits for it); if every candidate is spent, the least
failed one that takes attempts is tried again. When none takes attempts, the message is held
for the one that frees soonest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from domain.ports import Hold, Trial

Admission = Hold | Trial | None

#: Transient failures of one provider after which a message moves to the next (``failover_after``).
DEFAULT_FAILOVER_AFTER = 2


@dataclass(frozen=True, slots=True)
class Route:
    """A channel's default route: providers and their weights (``[routes.CHANNEL] weights``)."""

    weights: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        if not self.weights:
            raise ValueError("a route needs at least one provider")
        if any(weight < 0 for _, weight in self.weights) or not sum(w for _, w in self.weights):
            raise ValueError("route weights must be >= 0 and not all 0")

    def order(self, key: int) -> list[str]:
        """The providers in the order a message with ``key`` tries them: its weighted pick first
        (``key`` spread uniformly, so the picks split by weight), then the rest as configured."""
        total = sum(weight for _, weight in self.weights)
        point = key % total
        first = self.weights[-1][0]
        for name, weight in self.weights:
            if point < weight:
                first = name
                break
            point -= weight
        return [first, *(name for name, weight in self.weights if name != first and weight > 0)]


@dataclass(frozen=True, slots=True)
class Choice:
    """The provider chosen, and the gate's answer for it (None or ``Trial``: attempt; ``Hold``)."""

    provider: str
    admission: Admission


@dataclass(frozen=True)
class RoutingPolicy:
    """The routing settings of one deployment; ``choose`` applies them to one message."""

    default_provider: str
    providers: frozenset[str] = frozenset()
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    routes: Mapping[str, Route] = field(default_factory=dict)
    failover_after: int = DEFAULT_FAILOVER_AFTER

    def __post_init__(self) -> None:
        if self.failover_after < 1:
            raise ValueError("failover_after must be >= 1")
        if self.providers and self.default_provider not in self.providers:
            raise ValueError(f"the default provider {self.default_provider!r} is not a configured provider")
        known = self.providers | {self.default_provider}
        for name, chain in self.fallbacks.items():
            for other in chain:
                if other not in known or other == name:
                    raise ValueError(
                        f"provider {name}: fallback {other!r} is not another configured provider"
                    )
        for channel, route in self.routes.items():
            for other, _ in route.weights:
                if other not in known:
                    raise ValueError(f"route {channel}: {other!r} is not a configured provider")

    def candidates(self, pinned: str | None, channel: str, key: UUID) -> list[str]:
        """Every provider the message may use, most preferred first."""
        if pinned is not None and pinned in self.providers:
            return [pinned]
        route = self.routes.get(channel)
        primaries = route.order(key.int) if route is not None else [self.default_provider]
        ordered: list[str] = []
        for name in primaries:
            for candidate in (name, *self.fallbacks.get(name, ())):
                if candidate not in ordered:
                    ordered.append(candidate)
        return ordered

    def choose(
        self,
        *,
        pinned: str | None,
        channel: str,
        key: UUID,
        failures: Mapping[str, int],
        admit: Callable[[str], Admission],
    ) -> Choice:
        """The provider of the next attempt (``failures``: this cycle's transient failures by
        provider; ``admit``: the gate). The gate is asked in order until one takes the attempt."""
        candidates = self.candidates(pinned, channel, key)
        fresh = [name for name in candidates if failures.get(name, 0) < self.failover_after]
        spent = sorted((n for n in candidates if n not in fresh), key=lambda n: failures.get(n, 0))
        holds: list[Choice] = []
        for name in _unique([*fresh, *spent]):
            admission = admit(name)
            if not isinstance(admission, Hold) or admission.paced:  # a pace's wait is short
                return Choice(name, admission)
            holds.append(Choice(name, admission))
        return min(holds, key=lambda choice: _until(choice))


def _until(choice: Choice) -> float:
    assert isinstance(choice.admission, Hold)
    return choice.admission.until.timestamp()


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))
