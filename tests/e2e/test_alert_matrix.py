"""The 99/1 figure: faults that heal raise no alert; faults that do not heal (or that only an alert
can reveal) raise exactly one alert within 60 s, resolved once healed.

``smeg run`` against two switchable HTTP providers (``a`` takes the traffic, ``b`` the canary,
every 2 s with a 2 s SLO), the broker and the store reached through TCP proxies where a scenario
restarts them, and the rules' thresholds scaled down (``RULES``). One line per scenario, then the
two closing numbers (``test_the_99_1_figure``, which needs every scenario to have run)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.alert_store import AlertStore
from adapters.event_store import MessageStore
from domain.message import DELIVERED
from domain.ports import MessageNotFoundError
from tests.e2e.conftest import AMQP_URL, TcpProxy, publish_requests, smeg_env
from tests.e2e.faulty_provider import DOWN, FLAKY, OK, REFUSING, SLOW, SLUGGISH, FaultyProvider
from tests.e2e.test_run_processes import logged
from tests.waiting import wait_until

RULES = (
    "[alerts.rules.provider_down]\nthreshold = 15\nclear_for = 5\n"
    "[alerts.rules.failures]\nthreshold = 1\nwindow = 20\nclear_for = 5\n"
    "[alerts.rules.canary]\nthreshold = 2\nclear_for = 5\n"
    "[alerts.rules.backlog_growing]\nthreshold = 120\nfor = 0\nclear_for = 5\n"
)
CIRCUIT = "window = 5\nactivation_threshold = 10\nopen_for = 1\nmax_open_for = 4\nhalf_open_attempts = 3\n"


@dataclass
class Rig:
    """One scenario's world: providers, proxies, and the ``smeg run`` of the moment."""

    directory: Path
    prefix: str
    start_smeg: Any
    env: dict[str, str]
    a: FaultyProvider
    b: FaultyProvider
    broker: TcpProxy
    store_proxy: TcpProxy | None
    url: str
    schema: str
    smeg: Any = None
    ids: list[str] = field(default_factory=list)

    def start(self, **overrides: str) -> None:
        self.smeg = self.start_smeg(self.env | overrides, "run")
        smeg = self.smeg
        wait_until(lambda: logged(smeg, "runtime_started") or smeg.assert_running(), 60, message="started")

    def publish(self, count: int, tag: str) -> None:
        ids = [f"{self.prefix}-{tag}{i}" for i in range(count)]
        publish_requests(self.prefix, ids)
        self.ids += ids

    def store(self) -> MessageStore:
        return MessageStore(self.url, schema=self.schema)


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Callable[[Rig], None]  # injects the fault and returns once it is healed
    heals: bool  # transient: must raise no alert
    expect: str | None = None  # the one rule a lasting fault must fire
    postgres: bool = False


@dataclass
class Outcome:
    fired: list[tuple[str, str, float]] = field(default_factory=list)  # (rule, key, s after the fault)
    resolved: list[str] = field(default_factory=list)


def provider_fault(mode: str, seconds: float, provider: str = "a") -> Callable[[Rig], None]:
    def fault(rig: Rig) -> None:
        switched = rig.a if provider == "a" else rig.b
        switched.mode = mode
        time.sleep(seconds)
        switched.mode = OK

    return fault


def broker_restart(rig: Rig) -> None:
    """The broker goes away for 5 s: smeg exits 4, and its orchestrator starts a fresh one."""
    rig.broker.cut()
    assert rig.smeg.wait(timeout=60) == 4
    time.sleep(5)
    rig.start(SMEG_AMQP_URL=AMQP_URL)


def store_restart(rig: Rig) -> None:
    """PostgreSQL goes away for 8 s (every connection dropped, new ones refused); smeg rides it out."""
    assert rig.store_proxy is not None
    rig.store_proxy.restart(8)


def worker_crash(rig: Rig) -> None:
    """kill -9 in the middle of the traffic; the orchestrator starts a fresh process."""
    time.sleep(1)
    rig.smeg.kill()
    rig.smeg.wait(timeout=30)
    rig.start()


def backlog_surge(rig: Rig) -> None:
    """For 60 s, requests arrive at 25/s for a provider paced at 20/s (``rate_limit``)."""
    for second in range(60):
        started = time.monotonic()
        rig.publish(25, f"surge{second}-")
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


SCENARIOS = [
    Scenario("provider 5xx burst (20 %, 10 s)", provider_fault(FLAKY, 10), heals=True),
    Scenario("short provider outage (8 s)", provider_fault(DOWN, 8), heals=True),
    Scenario("slow provider (half the calls 1 s, 6 s)", provider_fault(SLOW, 6), heals=True),
    Scenario("worker crash (kill -9)", worker_crash, heals=True),
    Scenario("broker restart (5 s)", broker_restart, heals=True),
    Scenario("database restart (8 s)", store_restart, heals=True, postgres=True),
    Scenario("backlog surge (25/s for 60 s, paced 20/s)", backlog_surge, heals=True),
    Scenario("provider outage (40 s)", provider_fault(DOWN, 40), heals=False, expect="provider_down"),
    Scenario("permanent failures (10 s)", provider_fault(REFUSING, 10), heals=False, expect="failures"),
    Scenario(
        "canary loss (3 s calls, 20 s)", provider_fault(SLUGGISH, 20, "b"), heals=False, expect="canary"
    ),
]

#: Each scenario's outcome, for the closing figure (the scenarios run in file order).
RESULTS: dict[str, Outcome] = {}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario(scenario: Scenario, tmp_path: Path, e2e_prefix: str, start_smeg: Any, request: Any) -> None:
    url, schema = f"sqlite:///{tmp_path}/smeg.db", ""
    store_proxy = None
    if scenario.postgres:
        base, schema = request.getfixturevalue("pg_schema")
        store_proxy = TcpProxy(("127.0.0.1", 5432))
        url = base.replace("127.0.0.1:5432", f"127.0.0.1:{store_proxy.port}")
        assert url != base
    outcome = run(scenario, tmp_path, e2e_prefix, start_smeg, url, schema, store_proxy)
    RESULTS[scenario.name] = outcome
    fired = ", ".join(f"{rule} ({key}) after {at:.0f} s" for rule, key, at in outcome.fired) or "none"
    capsys = request.getfixturevalue("capsys")
    with capsys.disabled():
        print(f"\n{scenario.name:<44} fired: {fired}; resolved: {', '.join(outcome.resolved) or 'none'}")
    assert _as_expected(scenario, outcome), outcome


def test_the_99_1_figure(capsys: Any) -> None:
    assert set(RESULTS) == {s.name for s in SCENARIOS}, sorted(RESULTS)
    results = [(s, RESULTS[s.name]) for s in SCENARIOS]
    healed = [o for s, o in results if s.heals]
    silent = sum(1 for o in healed if not o.fired)
    lasting = [(s, o) for s, o in results if not s.heals]
    once = sum(1 for s, o in lasting if _as_expected(s, o))
    with capsys.disabled():
        print(
            f"\n99/1: transient scenarios that healed with no alert {silent}/{len(healed)} "
            f"({100 * silent / len(healed):.0f} %); lasting ones alerted exactly once within 60 s and "
            f"resolved after healing {once}/{len(lasting)} ({100 * once / len(lasting):.0f} %)",
            flush=True,
        )
    assert silent == len(healed) and once == len(lasting), results


def _as_expected(scenario: Scenario, outcome: Outcome) -> bool:
    if scenario.heals:
        return not outcome.fired
    return (
        [rule for rule, _, _ in outcome.fired] == [scenario.expect]
        and outcome.fired[0][2] <= 60
        and outcome.resolved == [scenario.expect]
    )


def run(
    scenario: Scenario,
    directory: Path,
    prefix: str,
    start_smeg: Any,
    url: str,
    schema: str,
    store_proxy: TcpProxy | None,
) -> Outcome:
    a, b, broker = FaultyProvider(), FaultyProvider(seed=11), TcpProxy()
    config = directory / "smeg.toml"
    config.write_text(
        f'[providers.a]\ntype = "http"\nurl = "{a.url}"\nrate_limit = 20\n[providers.a.circuit]\n{CIRCUIT}'
        f'[providers.b]\ntype = "http"\nurl = "{b.url}"\n'
        '[canary]\nto = "+447700900999"\nprovider = "b"\ninterval = 2\n' + RULES
    )
    env = smeg_env(
        SMEG_DATABASE_URL=url,
        SMEG_DATABASE_SCHEMA=schema,
        SMEG_AMQP_URL=broker.url(),
        SMEG_QUEUE_PREFIX=prefix,
        SMEG_CONFIG=str(config),
        SMEG_DEFAULT_PROVIDER="a",
        SMEG_MAX_ATTEMPTS="6",
        SMEG_BACKOFF_INITIAL="0.5",
        SMEG_BACKOFF_FACTOR="3",
        SMEG_STALE_AFTER="5",
    )
    rig = Rig(directory, prefix, start_smeg, env, a, b, broker, store_proxy, url, schema)
    try:
        rig.start()
        began = datetime.now(UTC)
        rig.publish(40, "m")
        scenario.fault(rig)
        rig.publish(5, "after")  # traffic goes on
        store = rig.store()
        try:
            if scenario.heals:
                wait_until(lambda: _delivered(store, rig.ids), 150, message=f"{scenario.name}: delivered")
                time.sleep(10)  # long after any scaled rule would have fired
            else:
                wait_until(
                    lambda: _resolved(store, scenario.expect),
                    90,
                    message=lambda: f"{scenario.name}: not resolved; alerts: {_describe(store)}",
                )
            return _outcome(store, began)
        finally:
            store.close()
    finally:
        if rig.smeg is not None and rig.smeg.process.poll() is None:
            rig.smeg.process.send_signal(signal.SIGTERM)
            rig.smeg.wait(timeout=60)
        for closing in (a, b):
            closing.close()
        broker.cut()
        if store_proxy is not None:
            store_proxy.cut()


def _delivered(store: MessageStore, ids: list[str]) -> bool:
    try:
        return all(store.get_by_message_id(i).status == DELIVERED for i in list(ids))
    except MessageNotFoundError:  # not received yet
        return False


def _resolved(store: MessageStore, rule: str | None) -> bool:
    alerts = AlertStore(store)
    found = [alerts.get(r, k) for r, k in alerts.opened() if r == rule]
    return any(a is not None and a.fired and not a.is_open for a in found)


def _describe(store: MessageStore) -> str:
    alerts = AlertStore(store)
    return "; ".join(
        f"{rule}/{key}: " + ", ".join(type(e).__name__ for e in store.history(alert.id))
        for rule, key in alerts.opened()
        if (alert := alerts.get(rule, key)) is not None
    )


def _outcome(store: MessageStore, began: datetime) -> Outcome:
    outcome = Outcome()
    alerts = AlertStore(store)
    for rule, key in alerts.opened():
        alert = alerts.get(rule, key)
        assert alert is not None
        for event in store.history(alert.id):
            kind = type(event).__name__
            if kind == "AlertRaised":
                outcome.fired.append((rule, key, (event.timestamp - began).total_seconds()))
            elif kind == "AlertResolved" and getattr(event, "fired", False):
                outcome.resolved.append(rule)
    return outcome
