"""Tracing end to end: a request published to the real RabbitMQ with a ``traceparent`` header goes
through the pipeline (SQLite store) to a real HTTP provider; intake, attempt and provider-call spans
continue the producer's trace, and the provider receives the call's span as ``traceparent``."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pika
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from adapters.event_store import MessageStore
from adapters.providers import build_provider
from smeg_actors.runtime import tracing
from smeg_actors.runtime.bootstrap import build_runtime
from smeg_actors.runtime.config import Settings
from smeg_actors.runtime.pipeline import Runtime
from tests.waiting import wait_until

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PRODUCER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PRODUCER_SPAN}-01"
PHONE = "+447700900123"
BODY = "Your code is 918273"


class Provider(ThreadingHTTPServer):
    """A provider on 127.0.0.1: records each request's headers; answers from ``statuses`` in turn
    (the last one repeats)."""

    daemon_threads = True

    def __init__(self, statuses: list[int]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.statuses = statuses
        self.seen: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/send"


class _Handler(BaseHTTPRequestHandler):
    server: Provider

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append({k.lower(): v for k, v in self.headers.items()})
        status = self.server.statuses[min(len(self.server.seen), len(self.server.statuses)) - 1]
        raw = json.dumps({"id": f"prov-{len(self.server.seen)}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure(exporter=exporter)
    yield exporter
    tracing.shutdown()


@pytest.fixture
def run_pipeline(tmp_path: Path, amqp_url: str, prefix: str) -> Iterator[Callable[[list[int]], Provider]]:
    """Start the pipeline with an HTTP provider answering ``statuses``; stopped afterwards."""
    started: list[tuple[Runtime, MessageStore, Provider]] = []

    def start(statuses: list[int]) -> Provider:
        server = Provider(statuses)
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        url = f"sqlite:///{tmp_path}/smeg.db"
        settings = Settings(
            database_url=url,
            amqp_url=amqp_url,
            queue_prefix=prefix,
            workers=2,
            backoff_initial=0.2,
            max_attempts=3,
            projector="inline",
            heartbeat=10,
        )
        store = MessageStore(url)
        provider = build_provider("p1", {"type": "http", "url": server.url}, {})
        runtime = build_runtime(settings, store=store, providers={"p1": provider}, redrive=False)
        started.append((runtime, store, server))
        runtime.start()
        return server

    yield start
    for runtime, store, server in started:
        runtime.stop(timeout=5)
        store.close()
        server.shutdown()
        server.server_close()


def publish(channel: Any, prefix: str, message_id: str) -> None:
    body = json.dumps({"message_id": message_id, "channel": "sms", "to": PHONE, "body": BODY}).encode()
    properties = pika.BasicProperties(delivery_mode=2, headers={"traceparent": TRACEPARENT})
    channel.basic_publish("", f"{prefix}.send", body, properties)


def spans(exporter: InMemorySpanExporter, name: str, count: int) -> list[ReadableSpan]:
    """The ``count`` spans called ``name``, once they all ended."""

    def ended() -> list[ReadableSpan]:
        found = [span for span in exporter.get_finished_spans() if span.name == name]
        return found if len(found) >= count else []

    return wait_until(ended, 15, message=f"{count} {name} spans")


def traceparent_of(span: ReadableSpan) -> str:
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"


def test_a_producers_trace_continues_through_intake_and_attempt_to_the_provider(
    exporter: InMemorySpanExporter, run_pipeline: Callable[[list[int]], Provider], rabbit: Any, prefix: str
) -> None:
    # Given
    provider = run_pipeline([200])
    # When a producer publishes a request with its trace context
    publish(rabbit, prefix, "traced-1")
    # Then the spans chain producer → intake → attempt → provider call in the producer's trace
    [intake] = spans(exporter, "smeg.intake", 1)
    [attempt] = spans(exporter, "smeg.attempt", 1)
    [call] = spans(exporter, "smeg.provider_call", 1)
    assert {f"{s.context.trace_id:032x}" for s in (intake, attempt, call)} == {TRACE_ID}
    assert intake.parent is not None and f"{intake.parent.span_id:016x}" == PRODUCER_SPAN
    assert attempt.parent is not None and attempt.parent.span_id == intake.context.span_id
    assert call.parent is not None and call.parent.span_id == attempt.context.span_id
    assert dict(call.attributes or {}) == {
        "smeg.provider": "p1",
        "smeg.channel": "sms",
        "smeg.message_id": "traced-1",
        "smeg.outcome": "delivered",
    }
    # and the provider was called with the provider call's span as its parent
    assert [seen["traceparent"] for seen in provider.seen] == [traceparent_of(call)]
    for span in exporter.get_finished_spans():
        assert not any(PHONE in str(v) or BODY in str(v) for v in (span.attributes or {}).values())


def test_attempts_after_a_backoff_stay_in_the_producers_trace(
    exporter: InMemorySpanExporter, run_pipeline: Callable[[list[int]], Provider], rabbit: Any, prefix: str
) -> None:
    # Given a provider that fails the first call transiently
    provider = run_pipeline([503, 200])
    # When
    publish(rabbit, prefix, "traced-2")
    # Then the retry, released by the scheduler after the backoff, is again under the intake span
    [intake] = spans(exporter, "smeg.intake", 1)
    attempts = spans(exporter, "smeg.attempt", 2)
    calls = spans(exporter, "smeg.provider_call", 2)
    assert [(a.attributes or {}).get("smeg.outcome") for a in attempts] == ["backed_off", "delivered"]
    for attempt in attempts:
        assert f"{attempt.context.trace_id:032x}" == TRACE_ID
        assert attempt.parent is not None and attempt.parent.span_id == intake.context.span_id
    by_parent = {call.parent.span_id: call for call in calls if call.parent is not None}
    answered = [by_parent[a.context.span_id] for a in attempts]
    assert [(c.attributes or {}).get("smeg.outcome") for c in answered] == ["transient", "delivered"]
    assert [seen["traceparent"] for seen in provider.seen] == [traceparent_of(c) for c in answered]
