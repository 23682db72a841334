"""The fault matrix: ``smeg run`` against an HTTP provider that fails in each way a real one does.
One line per scenario, then the closing figure; every scenario must end with 0 messages exhausted,
0 attempts sent through an open circuit (half-open trials aside) and 100 % delivered.

Times are scaled down from production (backoff 1, 3, 9 … minutes): each scenario states its
backoff horizon, and each fault lasts as long relative to it as the issue asks, or longer.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from adapters.event_store import MessageStore
from adapters.provider_health_store import ProviderHealthStore
from domain.message import DELIVERED, Message
from tests.e2e.conftest import publish_requests, smeg_env
from tests.e2e.faulty_provider import DOWN, FLAKY, SLOW, THROTTLING, FaultyProvider
from tests.e2e.test_run_processes import logged
from tests.waiting import wait_until

CIRCUIT = "window = 5\nactivation_threshold = 10\nopen_for = 1\nmax_open_for = 4\nhalf_open_attempts = 3\n"
#: An attempt begun this soon after the circuit opened was in a batch admitted before it opened.
GRACE = timedelta(seconds=1)


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: str
    seconds: float
    messages: int = 60
    max_attempts: int = 3
    backoff_initial: float = 0.2
    fallback: bool = False

    @property
    def horizon(self) -> float:
        return sum(self.backoff_initial * 3**i for i in range(self.max_attempts - 1))


@dataclass
class Figures:
    exhausted: int = 0
    through_open: int = 0
    delivered: int = 0
    messages: int = 0
    primary_calls_during: int = 0
    delivered_during: int = 0
    most_lost: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self, scenario: Scenario) -> str:
        extra = f", {'; '.join(self.notes)}" if self.notes else ""
        return (
            f"{scenario.name:<34} {scenario.fault} {scenario.seconds:g} s (horizon {scenario.horizon:g} s): "
            f"exhausted {self.exhausted}, attempts through an open circuit {self.through_open}, "
            f"delivered {self.delivered}/{self.messages}{extra}"
        )


SCENARIOS = [
    Scenario("provider outage, 20x the horizon", DOWN, 16.0),
    # 20 % of calls fail for half the horizon (production: 30 s of a 40-minute horizon)
    Scenario("5xx burst of 20 %", FLAKY, 10.0, messages=100, max_attempts=5, backoff_initial=0.5),
    Scenario("50 % slow calls (1 s)", SLOW, 6.0),
    Scenario("429 storm with Retry-After: 1", THROTTLING, 8.0),
    Scenario("primary outage, healthy fallback", DOWN, 16.0, fallback=True),
]


def test_the_fault_matrix(tmp_path: Path, e2e_prefix: str, start_smeg: Any, capsys: Any) -> None:
    results = []
    for number, scenario in enumerate(SCENARIOS):
        figures = run(scenario, tmp_path / f"s{number}", f"{e2e_prefix}-{number}", start_smeg)
        results.append((scenario, figures))
        with capsys.disabled():
            print("\n" + figures.line(scenario), flush=True)
    total = sum(f.messages for _, f in results)
    closing = (
        f"fault matrix: {len(results)} scenarios, {total} messages: "
        f"exhausted {sum(f.exhausted for _, f in results)}, "
        f"attempts through an open circuit {sum(f.through_open for _, f in results)}, "
        f"delivered {sum(f.delivered for _, f in results)}/{total}"
    )
    with capsys.disabled():
        print(closing, flush=True)
    for scenario, figures in results:
        assert (figures.exhausted, figures.through_open) == (0, 0), figures.line(scenario)
        assert figures.delivered == figures.messages, figures.line(scenario)
        if scenario.fallback:
            assert figures.delivered_during > 0 and figures.most_lost <= 2, figures.line(scenario)


def run(scenario: Scenario, directory: Path, prefix: str, start_smeg: Any) -> Figures:
    directory.mkdir()
    primary, fallback = FaultyProvider(), FaultyProvider(seed=11)
    config = directory / "smeg.toml"
    chain = 'fallback = ["b"]\n' if scenario.fallback else ""
    config.write_text(
        f'[providers.a]\ntype = "http"\nurl = "{primary.url}"\n{chain}[providers.a.circuit]\n{CIRCUIT}'
        f'[providers.b]\ntype = "http"\nurl = "{fallback.url}"\n'
    )
    url = f"sqlite:///{directory}/smeg.db"
    env = smeg_env(
        SMEG_DATABASE_URL=url,
        SMEG_QUEUE_PREFIX=prefix,
        SMEG_CONFIG=str(config),
        SMEG_DEFAULT_PROVIDER="a",
        SMEG_MAX_ATTEMPTS=str(scenario.max_attempts),
        SMEG_BACKOFF_INITIAL=str(scenario.backoff_initial),
        SMEG_BACKOFF_FACTOR="3",
    )
    smeg = start_smeg(env, "run")
    ids = [f"{prefix}-m{i}" for i in range(scenario.messages)]
    try:
        wait_until(lambda: logged(smeg, "runtime_started") or smeg.assert_running(), 60, message="started")
        began, began_at = datetime.now(UTC), time.monotonic()
        primary.mode = scenario.fault
        half = len(ids) // 2
        publish_requests(prefix, ids[:half])
        time.sleep(scenario.seconds / 2)  # the rest arrive once the fault is established
        publish_requests(prefix, ids[half:])
        time.sleep(scenario.seconds / 2)
        primary.mode = "ok"
        healed, healed_at = datetime.now(UTC), time.monotonic()
        store = MessageStore(url)
        try:
            wait_until(lambda: _all_delivered(store, ids), 120, message=lambda: f"{scenario.name}: delivered")
            figures = _figures(store, ids, began, healed)
        finally:
            store.close()
        figures.primary_calls_during = len(primary.calls_between(began_at, healed_at))
        if scenario.fault in (THROTTLING, DOWN):
            figures.notes.append(f"{figures.primary_calls_during} calls to it during the fault")
        if scenario.fallback:
            figures.notes.append(
                f"{figures.delivered_during} delivered by the fallback during the outage, "
                f"at most {figures.most_lost} attempts lost per message"
            )
        smeg.process.send_signal(signal.SIGTERM)
        assert smeg.wait(timeout=60) == 0
        return figures
    finally:
        primary.close()
        fallback.close()


def _all_delivered(store: MessageStore, ids: list[str]) -> bool:
    for message_id in ids:
        try:
            if store.get_by_message_id(message_id).status != DELIVERED:
                return False
        except Exception:
            return False
    return True


def _figures(store: MessageStore, ids: list[str], began: datetime, healed: datetime) -> Figures:
    figures = Figures(messages=len(ids))
    open_periods = _open_periods(store, "a")
    for message_id in ids:
        history = store.history(Message.create_id(message_id))
        names = [type(e).__name__ for e in history]
        figures.exhausted += sum(1 for e in history if type(e).__name__ == "Failed" and not e.permanent)
        figures.delivered += "Delivered" in names
        attempts = [e for e in history if type(e).__name__ == "Attempted"]
        figures.through_open += sum(
            1
            for e in attempts
            if e.provider == "a"
            and not e.trial
            and any(s + GRACE < e.timestamp < end for s, end in open_periods)
        )
        delivered = [e for e in history if type(e).__name__ == "Delivered"]
        if delivered and delivered[0].provider == "b":
            figures.most_lost = max(figures.most_lost, sum(1 for e in attempts if e.provider == "a"))
            figures.delivered_during += began < delivered[0].timestamp < healed
    return figures


def _open_periods(store: MessageStore, provider: str) -> list[tuple[datetime, datetime]]:
    """When the circuit was open (from CircuitOpened to the next half-open or close)."""
    health = ProviderHealthStore(store).get(provider)
    if health is None:
        return []
    periods, opened = [], None
    for event in store.history(health.id):
        kind = type(event).__name__
        if kind == "CircuitOpened":
            opened = event.timestamp
        elif kind in ("CircuitHalfOpened", "CircuitClosed") and opened is not None:
            periods.append((opened, event.timestamp))
            opened = None
    if opened is not None:
        periods.append((opened, datetime.now(UTC) + timedelta(days=1)))
    return periods
