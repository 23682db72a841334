"""Tracing: switched on by the standard OpenTelemetry variables only; spans intake → attempt →
provider call continuing the producer's trace, retries included; nothing imported while off; no
recipient or body in any attribute (spans exported to the SDK's in-memory exporter)."""

from __future__ import annotations

import asyncio
import queue
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import pykka
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from adapters.providers.http import with_trace_context
from adapters.rabbitmq_intake import TracedDelivery, trace_headers
from domain.backoff import BackoffPolicy
from domain.message import BACKED_OFF, DELIVERED, Message
from domain.ports import OutboundMessage, ProviderReceipt
from domain.request import parse_send_request
from smeg_actors.actors.intake import IntakeActor
from smeg_actors.actors.messages import (
    BatchFinished,
    DeliverBatch,
    DeliverMessages,
    RequestsReceived,
    WorkItem,
)
from smeg_actors.actors.provider_calls import ProviderCalls
from smeg_actors.actors.supervisor import Children
from smeg_actors.actors.worker import WorkerActor
from smeg_actors.runtime import tracing
from tests.fakes import FakeClock, FakeProvider, InMemoryMessageStore
from tests.waiting import wait_until

WAIT = 5.0
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
POLICY = BackoffPolicy(initial=60, factor=3, max_delay=3600, max_attempts=3)
PHONE = "+447700900123"
BODY = "Your code is 918273"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PRODUCER_SPAN}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure(exporter=exporter)
    yield exporter
    tracing.shutdown()


class Recorder(pykka.ThreadingActor):
    """Queues every message told to it."""

    def __init__(self, arrived: queue.Queue[Any]) -> None:
        super().__init__()
        self.arrived = arrived

    def on_receive(self, message: Any) -> None:
        self.arrived.put(message)


class FakeIntake:
    def ack(self, tags: Sequence[int]) -> None:
        pass

    def release(self, tags: Sequence[int]) -> None:
        pass


class Pipeline:
    """An intake actor and a worker on one in-memory store; what they tell the dispatcher is queued."""

    def __init__(self, provider: FakeProvider) -> None:
        self.store, self.clock, self.children = InMemoryMessageStore(), FakeClock(T0), Children()
        self.told: queue.Queue[Any] = queue.Queue()
        self.children.set("dispatcher", Recorder.start(self.told))
        for name in ("scheduler", "publisher", "redriver"):
            self.children.set(name, Recorder.start(queue.Queue()))
        self.calls = ProviderCalls({"fake": provider}, concurrency=8)
        common = dict(store=self.store, children=self.children, clock=self.clock, grace=1.0)
        self.intake = IntakeActor.start(
            "intake", None, intake=FakeIntake(), on_store_lost=lambda _why: None, **common
        )
        self.worker = WorkerActor.start(
            "worker-0",
            None,
            providers={"fake": provider},
            default_provider="fake",
            policy=POLICY,
            calls=self.calls,
            stale_after=120.0,
            call_timeout=5.0,
            on_store_lost=lambda _why: None,
            **common,
        )

    def receive(self, *deliveries: Any) -> tuple[WorkItem, ...]:
        self.intake.tell(RequestsReceived(deliveries))
        dispatched = self.told.get(timeout=WAIT)
        assert isinstance(dispatched, DeliverMessages)
        return dispatched.items

    def attempt(self, *items: WorkItem) -> None:
        self.worker.tell(DeliverBatch(items))
        assert isinstance(self.told.get(timeout=WAIT), BatchFinished)

    def status(self, message_id: str) -> str:
        return self.store.get(Message.create_id(message_id)).status

    def stop(self) -> None:
        pykka.ActorRegistry.stop_all()
        self.calls.stop()


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    built = Pipeline(FakeProvider(scripts={"m-retry": ["transient", "ok"]}))
    yield built
    built.stop()


def request_delivery(tag: int, message_id: str, *headers: tuple[str, str]) -> Any:
    raw = f'{{"message_id": "{message_id}", "channel": "sms", "to": "{PHONE}", "body": "{BODY}"}}'
    request = parse_send_request(raw.encode(), correlation_id="corr-1")
    return TracedDelivery(tag, request, headers)


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def assert_no_recipient_or_body(spans: Sequence[ReadableSpan]) -> None:
    for span in spans:
        for value in (span.attributes or {}).values():
            assert PHONE not in str(value) and "918273" not in str(value)
            assert "7700900123" not in str(value) and BODY not in str(value)


# --- switching on ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "smeg"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_wanted_only_when_an_exporter_or_an_otlp_endpoint_is_set(
    environ: dict[str, str], on: bool
) -> None:
    assert tracing.wanted(environ) is on


def test_configure_without_those_variables_leaves_tracing_off() -> None:
    assert tracing.configure({}) is False
    assert not tracing.active()


def test_configure_from_the_environment_switches_tracing_on_until_shutdown() -> None:
    try:
        assert tracing.configure({"OTEL_TRACES_EXPORTER": "console"}) is True
        assert tracing.active()
    finally:
        tracing.shutdown()
    assert not tracing.active()


def test_start_up_check_names_the_otlp_host_but_never_the_credentials_of_its_url() -> None:
    note = tracing.check({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:s3cret@collector.example:4318/x"})
    assert note == "traces to otlp http/protobuf to collector.example:4318"


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER=jaeger is not supported"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc is not supported"),
    ],
)
def test_start_up_check_refuses_what_smeg_cannot_export(environ: dict[str, str], says: str) -> None:
    with pytest.raises(tracing.TracingUnavailableError, match=says):
        tracing.check(environ)


def test_start_up_check_fails_in_one_line_when_the_otel_extra_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import raises ImportError
    with pytest.raises(tracing.TracingUnavailableError) as raised:
        tracing.configure({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert (
        str(raised.value)
        == "tracing is configured but the otel extra is not installed (pip install 'smeg[otel]')"
    )
    assert not tracing.active()


def test_nothing_imports_opentelemetry_while_tracing_is_off() -> None:
    script = textwrap.dedent(
        """
        import sys
        import smeg_actors.cli.main, smeg_actors.runtime.bootstrap
        from adapters.providers.http import with_trace_context
        from smeg_actors.runtime import tracing
        assert tracing.configure({}) is False and tracing.attempt_spans([]) is None
        assert with_trace_context({"a": "b"}) == {"a": "b"}
        loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
        assert not loaded, loaded
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


# --- the spans ----------------------------------------------------------------------------------


def test_intake_attempt_and_provider_call_continue_the_producers_trace(
    exporter: InMemorySpanExporter, pipeline: Pipeline
) -> None:
    # Given a request whose producer sent its trace context
    items = pipeline.receive(request_delivery(1, "m-1", ("traceparent", TRACEPARENT)))
    # When it is attempted
    pipeline.attempt(*items)
    # Then intake, attempt and provider call form one chain under the producer's span
    [intake] = named(exporter, "smeg.intake")
    [attempt] = named(exporter, "smeg.attempt")
    [call] = named(exporter, "smeg.provider_call")
    assert {format(s.context.trace_id, "032x") for s in (intake, attempt, call)} == {TRACE_ID}
    assert intake.parent is not None and format(intake.parent.span_id, "016x") == PRODUCER_SPAN
    assert attempt.parent is not None and attempt.parent.span_id == intake.context.span_id
    assert call.parent is not None and call.parent.span_id == attempt.context.span_id
    assert (intake.kind, attempt.kind, call.kind) == (SpanKind.CONSUMER, SpanKind.INTERNAL, SpanKind.CLIENT)
    assert intake.attributes is not None and intake.attributes["smeg.outcome"] == "recorded"
    assert dict(call.attributes or {}) == {
        "smeg.provider": "fake",
        "smeg.channel": "sms",
        "smeg.message_id": "m-1",
        "smeg.outcome": "delivered",
    }
    assert attempt.attributes is not None and attempt.attributes["smeg.outcome"] == DELIVERED
    assert_no_recipient_or_body(exporter.get_finished_spans())


def test_a_retry_after_backoff_continues_the_same_trace_under_the_intake_span(
    exporter: InMemorySpanExporter, pipeline: Pipeline
) -> None:
    # Given a request whose first attempt fails transiently
    items = pipeline.receive(request_delivery(1, "m-retry", ("traceparent", TRACEPARENT)))
    pipeline.attempt(*items)
    assert pipeline.status("m-retry") == BACKED_OFF
    # When the scheduler releases it (by id only, no trace) after the backoff
    pipeline.clock.sleep(POLICY.initial + 1)
    pipeline.attempt(WorkItem(items[0].id))
    # Then both attempts are children of the intake span, in the producer's trace
    assert pipeline.status("m-retry") == DELIVERED
    [intake] = named(exporter, "smeg.intake")
    attempts = named(exporter, "smeg.attempt")
    assert [(a.attributes or {}).get("smeg.attempt") for a in attempts] == [1, 2]
    assert [(a.attributes or {}).get("smeg.outcome") for a in attempts] == [BACKED_OFF, DELIVERED]
    for attempt in attempts:
        assert attempt.parent is not None and attempt.parent.span_id == intake.context.span_id
        assert format(attempt.context.trace_id, "032x") == TRACE_ID
    calls = named(exporter, "smeg.provider_call")
    assert [(c.attributes or {}).get("smeg.outcome") for c in calls] == ["transient", "delivered"]
    assert calls[0].status.status_code == StatusCode.ERROR
    assert (calls[0].attributes or {}).get("http.response.status_code") == 503
    assert_no_recipient_or_body(exporter.get_finished_spans())


def test_a_request_without_or_with_a_broken_traceparent_starts_a_trace_of_its_own(
    exporter: InMemorySpanExporter, pipeline: Pipeline
) -> None:
    items = pipeline.receive(
        request_delivery(1, "m-none"), request_delivery(2, "m-bad", ("traceparent", "00-zz-yy-01"))
    )
    pipeline.attempt(*items)
    intakes = named(exporter, "smeg.intake")
    assert len(intakes) == 2 and all(span.parent is None for span in intakes)
    for intake in intakes:
        [attempt] = [
            a for a in named(exporter, "smeg.attempt") if a.context.trace_id == intake.context.trace_id
        ]
        assert attempt.parent is not None and attempt.parent.span_id == intake.context.span_id


def test_a_duplicate_requests_intake_span_ends_as_a_duplicate_not_as_an_error(
    exporter: InMemorySpanExporter, pipeline: Pipeline
) -> None:
    pipeline.receive(request_delivery(1, "m-1", ("traceparent", TRACEPARENT)))
    [item] = pipeline.receive(request_delivery(2, "m-1"), request_delivery(3, "m-2"))
    assert item.message is not None and item.message.message_id == "m-2"
    later = {
        (span.attributes or {}).get("smeg.message_id"): span for span in named(exporter, "smeg.intake")[1:]
    }
    assert {key: (span.attributes or {}).get("smeg.outcome") for key, span in later.items()} == {
        "m-1": "duplicate",
        "m-2": "recorded",
    }
    assert {span.status.status_code for span in later.values()} == {StatusCode.UNSET}


def test_a_producer_trace_that_is_not_sampled_records_no_span(
    exporter: InMemorySpanExporter, pipeline: Pipeline
) -> None:
    items = pipeline.receive(request_delivery(1, "m-1", ("traceparent", TRACEPARENT[:-2] + "00")))
    pipeline.attempt(*items)
    assert pipeline.status("m-1") == DELIVERED
    assert exporter.get_finished_spans() == ()


def attempt_span(span_id: int = 0x1234) -> NonRecordingSpan:
    """A stand-in for an attempt's span, in the producer's trace."""
    context = SpanContext(int(TRACE_ID, 16), span_id, is_remote=False, trace_flags=TraceFlags(1))
    return NonRecordingSpan(context)


def test_a_provider_call_past_the_batch_deadline_ends_as_a_timeout(exporter: InMemorySpanExporter) -> None:
    class Silent(FakeProvider):
        async def send(self, message: OutboundMessage) -> ProviderReceipt:
            await asyncio.sleep(30)
            raise AssertionError("never answers")

    calls = ProviderCalls({"silent": Silent()}, concurrency=2)
    message = OutboundMessage("m-1", "sms", PHONE, None, BODY, "c-1")
    try:
        calls.run([("silent", message)], timeout=0.2, parents=[attempt_span()])
        [call] = wait_until(lambda: named(exporter, "smeg.provider_call"), WAIT)
    finally:
        calls.stop()
    assert call.parent is not None and call.parent.span_id == 0x1234
    assert (call.attributes or {}).get("smeg.outcome") == "timeout"
    assert (call.attributes or {}).get("error.type") == "TimeoutError"
    assert call.status.status_code == StatusCode.ERROR


# --- propagation helpers --------------------------------------------------------------------------


def test_the_http_provider_sends_the_current_provider_call_as_traceparent(
    exporter: InMemorySpanExporter,
) -> None:
    assert with_trace_context({}) == {}  # no span is current
    call = tracing.provider_call(attempt_span(), "p1", "sms", "m-1")
    assert call is not None
    headers = with_trace_context({"Idempotency-Key": "m-1"})
    call.finish("delivered")
    span_id = call.span.get_span_context().span_id
    assert headers == {"Idempotency-Key": "m-1", "traceparent": f"00-{TRACE_ID}-{span_id:016x}-01"}
    assert with_trace_context({}) == {}  # the call's context was left


def test_only_sane_trace_context_headers_are_taken_from_an_amqp_message() -> None:
    assert trace_headers(None) == () and trace_headers("junk") == ()
    assert trace_headers({"traceparent": TRACEPARENT, "x": "y"}) == (("traceparent", TRACEPARENT),)
    assert trace_headers({"traceparent": TRACEPARENT.encode(), "tracestate": "a=1"}) == (
        ("traceparent", TRACEPARENT),
        ("tracestate", "a=1"),
    )
    assert trace_headers({"traceparent": "x" * 129, "tracestate": "a=1\nb=2"}) == ()
    assert trace_headers({"traceparent": 42, "tracestate": {"a": 1}}) == ()


def test_the_memory_of_retries_forgets_the_oldest_beyond_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "RETRY_MEMORY", 2)
    ids = [uuid.uuid4() for _ in range(3)]
    for n, aggregate_id in enumerate(ids):
        tracing.remember_retry(aggregate_id, (("traceparent", str(n)),))
    assert [tracing.recall_retry(i) for i in ids] == [(), (("traceparent", "1"),), (("traceparent", "2"),)]
    assert tracing.recall_retry(ids[1]) == ()  # recalled once
