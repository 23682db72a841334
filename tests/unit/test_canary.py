"""The canary: misses of the SLO in a row (domain), the actor that sends and follows canaries,
its settings, and the sensor the ``canary`` alert reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.alert import DEFAULT_RULES
from domain.canary import CANARY_TAG, CanaryLog, canary_message_id
from domain.request import MESSAGE_ID_RE, SendRequest
from smeg_actors.actors.canary import CanaryActor
from smeg_actors.actors.messages import Tick
from smeg_actors.runtime import metrics
from smeg_actors.runtime.alerting import canary_misses
from smeg_actors.runtime.canary import canary_request, check_canary, sends_canary
from smeg_actors.runtime.config import SettingsError, load_settings
from tests.fakes import FakeClock

T0 = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_canary_delivered_within_the_slo_clears_the_misses() -> None:
    log = CanaryLog(slo=30)
    log.sent("a", at(0))
    log.settle({}, at(31))  # not delivered 31 s after: a miss
    log.sent("b", at(60))
    log.settle({}, at(91))
    assert (log.misses, log.breached) == (2, True)
    log.sent("c", at(120))
    log.settle({"c": at(125)}, at(125))
    assert (log.misses, log.breached, log.last_seconds) == (0, False, 5.0)
    assert (log.delivered, log.missed, log.waiting) == (1, 2, {})


def test_one_miss_is_not_a_breach_and_a_late_delivery_is_a_miss_counted_once() -> None:
    log = CanaryLog(slo=30)
    log.sent("a", at(0))
    log.settle({}, at(10))
    assert (log.misses, log.waiting) == (0, {"a": at(0)})  # still within its SLO
    log.settle({"a": at(40)}, at(40))  # delivered, but after 40 s
    assert (log.misses, log.missed, log.breached, log.last_seconds) == (1, 1, False, 40.0)
    log.settle({"a": at(41)}, at(41))  # forgotten: not counted again
    assert log.missed == 1


@given(st.lists(st.one_of(st.none(), st.floats(0, 100)), min_size=1, max_size=30))
def test_misses_are_the_canaries_since_the_latest_in_time(latencies: list[float | None]) -> None:
    log = CanaryLog(slo=30)
    for number, latency in enumerate(latencies):
        sent = at(number * 200)
        log.sent(str(number), sent)
        delivered = {} if latency is None else {str(number): sent + timedelta(seconds=latency)}
        log.settle(delivered, sent + timedelta(seconds=150))
    in_time = [i for i, latency in enumerate(latencies) if latency is not None and latency <= 30]
    expected = len(latencies) - 1 - in_time[-1] if in_time else len(latencies)
    assert log.misses == expected
    assert log.breached == (expected >= 2)
    assert log.delivered + log.missed == len(latencies)


def test_canary_ids_pass_the_edge_rules_whatever_the_host_name() -> None:
    for node in ("web-1/123", "höst name/1", "x" * 300):
        message_id = canary_message_id(node, 7, T0)
        assert MESSAGE_ID_RE.fullmatch(message_id), message_id
        assert message_id.startswith("smeg-canary.")


def settings(table: str) -> Any:
    return load_settings({}, config_path=None) if not table else _from_toml(table)


def _from_toml(text: str) -> Any:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as fh:
        fh.write(text)
    return load_settings({}, fh.name)


def test_the_canary_request_is_tagged_and_passes_the_edge_rules() -> None:
    configured = _from_toml('[canary]\nto = "+447700900123"\ninterval = 5\n')
    assert configured.canary.interval == 5 and configured.canary.channel == "sms"
    request = canary_request(configured, "smeg-canary.n.1.1", "web-1/42")
    assert (request.to, request.metadata) == ("+447700900123", {CANARY_TAG: "web-1/42"})
    assert request.provider is None and request.correlation_id == "smeg-canary.n.1.1"


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ('[canary]\nto = "12345"\n', "canary: "),
        ('[canary]\nto = "+447700900123"\nprovider = "nope"\n', "provider 'nope' is not configured"),
        ('[canary]\nto = "+447700900123"\ninterval = 0\n', "interval"),
        ('[canary]\nto = "+447700900123"\nslo = 3\n', "slo"),
        ("[canary]\n", "to"),
    ],
)
def test_a_canary_no_request_could_pass_is_refused_before_the_start(table: str, error: str) -> None:
    with pytest.raises(SettingsError, match=error):
        check_canary(_from_toml(table), ["default"])


def test_only_the_first_process_of_a_group_sends_the_canary() -> None:
    configured = _from_toml('[canary]\nto = "+447700900123"\n')
    assert sends_canary(configured, {}) and sends_canary(configured, {"SMEG_GROUP_INDEX": "0"})
    assert not sends_canary(configured, {"SMEG_GROUP_INDEX": "1"})
    assert not sends_canary(_from_toml('[canary]\nto = "+447700900123"\nenabled = false\n'), {})
    assert not sends_canary(load_settings({}), {})


class Path_:
    """The send queue and the store, as the actor sees them: ``deliver_after`` seconds (None:
    never), ``broken``: sends raise."""

    def __init__(self, clock: FakeClock[datetime]) -> None:
        self.clock = clock
        self.sent: dict[str, datetime] = {}
        self.deliver_after: float | None = 1.0
        self.broken = False

    def send(self, request: SendRequest) -> None:
        if self.broken:
            raise ConnectionError("refused")
        self.sent[request.message_id] = self.clock()

    def find(self, message_id: str) -> datetime | None:
        sent = self.sent.get(message_id)
        if sent is None or self.deliver_after is None:
            return None
        done = sent + timedelta(seconds=self.deliver_after)
        return done if done <= self.clock() else None


def test_the_actor_sends_every_interval_and_its_sensor_fires_after_two_misses() -> None:
    clock, tick = FakeClock(T0), FakeClock(0.0)
    path, log = Path_(clock), CanaryLog(slo=10)
    configured = _from_toml('[canary]\nto = "+447700900123"\n')
    actor = CanaryActor(
        "canary",
        None,
        canaries=log,
        request=lambda m: canary_request(configured, m, "n/1"),
        send=path.send,
        find=path.find,
        node="n/1",
        interval=30,
        clock=clock,
        monotonic=tick,
    )
    rule = DEFAULT_RULES["canary"]
    sensor = canary_misses(log, type(rule)("canary", threshold=10), process="n/1")
    misses_before = metrics.canary_misses._value.get()

    def run(seconds: int) -> None:
        for _ in range(seconds):
            clock.sleep(1)
            tick.sleep(1)
            actor.on_receive(Tick())

    run(60)  # healthy: two canaries, each delivered in 1 s
    assert len(path.sent) == 2 and log.delivered >= 1 and log.misses == 0
    assert metrics.canary_seconds._value.get() == 1.0
    assert sensor(clock()) and sensor(clock())[0].breached is False
    path.deliver_after = None  # the path breaks (canaries sent at 61 s and 91 s)
    run(15)
    assert log.misses == 1 and sensor(clock())[0].breached is False  # one miss: not yet
    run(30)
    [seen] = sensor(clock())
    assert (seen.key, seen.value, seen.breached) == ("n/1", 2.0, True)
    assert metrics.canary_misses._value.get() - misses_before == 2
    path.deliver_after, path.broken = 1.0, True  # healed, but the broker refuses the canary
    run(45)
    assert log.misses >= 3  # a canary not sent is a miss too
    path.broken = False
    run(35)
    assert log.misses == 0 and sensor(clock())[0].breached is False
