"""Tracing (the optional extra ``otel``): OpenTelemetry spans for intake, attempt and provider call.

Off unless the standard OpenTelemetry variables ask for it (``wanted``): while off, nothing here
imports ``opentelemetry`` and every hook the actors call costs one check of a module global.
``configure`` imports it and builds this process's tracer provider (not the global one).

Spans: ``smeg.intake`` (CONSUMER, one per request taken from the send queue, child of the
producer's ``traceparent``), ``smeg.attempt`` (one delivery attempt, child of the intake span)
and ``smeg.provider_call`` (CLIENT, child of its attempt, current while the provider is called, so
the HTTP provider writes its ``traceparent`` into the request). Attributes name the message by its
``message_id``, never by recipient or body.

Context travels as W3C trace-context headers (``Carrier``): from the AMQP message's headers on the
delivery, in ``WorkItem.trace`` to the worker of the first attempt, and for later attempts (a
backoff, a hold: the scheduler releases ids only) in this process's bounded memory of retries.

Imports: the standard library and ``domain`` only, ``opentelemetry`` only inside functions that run
once tracing is configured; never ``adapters`` (the actors import this module).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit
from uuid import UUID

from domain.message import DELIVERED, FAILED

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from domain.message import Message
    from domain.ports import Delivery

#: W3C trace-context headers, as (name, value) pairs: how a span's context travels.
Carrier = tuple[tuple[str, str], ...]
NO_TRACE: Carrier = ()
#: Messages waiting for a retry whose trace this process remembers; the oldest are forgotten.
RETRY_MEMORY = 100_000
#: The variables that switch tracing on (see ``wanted``).
SWITCHES = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
EXPORTERS = ("otlp", "console", "none")
MISSING_EXTRA = "the otel extra is not installed (pip install 'smeg[otel]')"


class TracingUnavailableError(Exception):
    """Tracing is asked for but cannot run; the message says why, in one line."""


class Traced(Protocol):
    """A work item: the message's id, and the trace its attempt continues (may be empty)."""

    @property
    def id(self) -> UUID: ...

    @property
    def trace(self) -> Carrier: ...


class _State:
    """What ``configure`` built: the tracer and the few OpenTelemetry callables the hooks use."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("smeg")
        self.propagator: TraceContextTextMapPropagator = TraceContextTextMapPropagator()
        self.in_context = trace.set_span_in_context
        self.attach, self.detach = context.attach, context.detach
        self.kinds, self.error = trace.SpanKind, trace.StatusCode.ERROR


_state: _State | None = None
_retries: OrderedDict[UUID, Carrier] = OrderedDict()
_retries_lock = threading.Lock()


# --- switching on and off -------------------------------------------------------------------------


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces: ``OTEL_TRACES_EXPORTER`` set to anything but
    ``none``, or (when it is unset) an OTLP endpoint set; never with ``OTEL_SDK_DISABLED=true``."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return any(name.strip() not in ("", "none") for name in exporters.split(","))
    return any(environ.get(name, "").strip() for name in SWITCHES[1:])


def check(environ: Mapping[str, str]) -> str:
    """``smeg run``'s start-up check, when ``wanted``: a note on where spans go.

    Raises:
        TracingUnavailableError: the extra is missing, or the variables name what smeg cannot do.
    """
    names = _exporter_names(environ)
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        raise TracingUnavailableError(f"tracing is configured but {MISSING_EXTRA}") from None
    notes = [_otlp_note(environ) if name == "otlp" else "console (stderr)" for name in names]
    return "traces to " + ", ".join(notes)


def configure(environ: Mapping[str, str] | None = None, *, exporter: SpanExporter | None = None) -> bool:
    """Switch tracing on as ``environ`` (default: the process's) asks; return whether it is on.

    ``exporter`` (tests): export every span to it as it ends, whatever the environment says.
    The exporters themselves read the rest of the standard variables (endpoint, headers, timeout,
    sampler: ``OTEL_TRACES_SAMPLER``, resource: ``OTEL_SERVICE_NAME``, default ``smeg``).

    Raises:
        TracingUnavailableError: as ``check``.
    """
    global _state
    environ = os.environ if environ is None else environ
    if exporter is None:
        if not wanted(environ):
            return False
        check(environ)
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "smeg"}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        for built in _exporters(_exporter_names(environ)):
            provider.add_span_processor(BatchSpanProcessor(built))
    previous, _state = _state, _State(provider)
    forget_retries()
    if previous is not None:
        previous.provider.shutdown()
    return True


def active() -> bool:
    """Whether spans are made (``configure`` switched tracing on)."""
    return _state is not None


def shutdown(timeout: float = 5.0) -> None:
    """Export what is buffered and switch tracing off, waiting ``timeout`` s at most (an
    unreachable collector must not hold up the exit; ``smeg run`` ends with ``os._exit``)."""
    global _state
    state, _state = _state, None
    forget_retries()
    if state is not None:
        worker = threading.Thread(target=state.provider.shutdown, name="smeg-tracing-stop", daemon=True)
        worker.start()
        worker.join(timeout)


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise TracingUnavailableError(
            f"OTEL_TRACES_EXPORTER={unknown[0]} is not supported (otlp, console, none)"
        )
    return [name for name in names if name != "none"]


def _otlp_note(environ: Mapping[str, str]) -> str:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip()
    if protocol not in ("", "http/protobuf"):
        raise TracingUnavailableError(f"OTLP protocol {protocol} is not supported (http/protobuf only)")
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
    except ImportError:
        raise TracingUnavailableError(f"OTLP traces are configured but {MISSING_EXTRA}") from None
    url = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    try:
        where = urlsplit((url or "").strip()).netloc.rpartition("@")[2] or "localhost:4318"
    except ValueError:
        raise TracingUnavailableError("the OTLP endpoint is not a URL") from None
    return f"otlp http/protobuf to {where}"  # the host only: a URL may carry credentials


def _exporters(names: Iterable[str]) -> list[SpanExporter]:
    built: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            built.append(OTLPSpanExporter())
        else:
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            built.append(ConsoleSpanExporter(out=sys.stderr))
    return built


# --- context ------------------------------------------------------------------------------------


def _parent(state: _State, carrier: Carrier) -> Context:
    """The context ``carrier`` names; an empty one (a new trace) when it names none or garbage."""
    return state.propagator.extract(dict(carrier))


def _carrier(state: _State, span: Span) -> Carrier:
    headers: dict[str, str] = {}
    state.propagator.inject(headers, context=state.in_context(span))
    return tuple(headers.items())


def _end(state: _State, span: Span, outcome: str, *, error: bool = False) -> None:
    span.set_attribute("smeg.outcome", outcome)
    if error:
        span.set_status(state.error, outcome)
    span.end()


def remember_retry(aggregate_id: UUID, carrier: Carrier) -> None:
    """Keep the trace a message's next attempt continues (it comes back through the scheduler,
    which carries ids only); beyond ``RETRY_MEMORY`` messages, the oldest is forgotten."""
    with _retries_lock:
        _retries[aggregate_id] = carrier
        _retries.move_to_end(aggregate_id)
        while len(_retries) > RETRY_MEMORY:
            _retries.popitem(last=False)


def recall_retry(aggregate_id: UUID) -> Carrier:
    """The trace remembered for the message (forgotten here), or none."""
    with _retries_lock:
        return _retries.pop(aggregate_id, NO_TRACE)


def forget_retries() -> None:
    with _retries_lock:
        _retries.clear()


# --- the spans ----------------------------------------------------------------------------------


class IntakeSpans:
    """The ``smeg.intake`` span of each delivery of a batch, from its arrival at the intake actor
    until its Received event is durable (or it is known a duplicate, or handed back)."""

    def __init__(self, state: _State, deliveries: Sequence[Delivery]) -> None:
        self.state = state
        began = time.time_ns()
        self.spans: dict[int, Span] = {}
        for delivery in deliveries:
            request = delivery.request
            self.spans[delivery.tag] = state.tracer.start_span(
                "smeg.intake",
                context=_parent(state, getattr(delivery, "trace", NO_TRACE)),
                kind=state.kinds.CONSUMER,
                start_time=began,
                attributes={
                    "messaging.operation.type": "process",
                    "messaging.message.conversation_id": request.correlation_id,
                    "smeg.message_id": request.message_id,
                    "smeg.channel": request.channel,
                },
            )

    def recorded(self, delivery: Delivery) -> Carrier:
        """End the delivery's span as recorded; the trace its attempts continue."""
        span = self.spans.pop(delivery.tag)
        carrier = _carrier(self.state, span)
        _end(self.state, span, "recorded")
        return carrier

    def finished(self, delivery: Delivery, outcome: str, *, error: bool = False) -> None:
        _end(self.state, self.spans.pop(delivery.tag), outcome, error=error)

    def close(self) -> None:
        """End what is still open: the batch was not recorded (the store is gone)."""
        for span in self.spans.values():
            _end(self.state, span, "not_recorded", error=True)
        self.spans.clear()


class AttemptSpans:
    """The ``smeg.attempt`` span of each message of a worker's batch that is attempted, from the
    batch's start until the attempt's outcome is durable; and the memory of retries."""

    def __init__(self, state: _State, items: Sequence[Traced]) -> None:
        self.state = state
        self.began = time.time_ns()
        self.parents = {item.id: recall_retry(item.id) for item in items}
        self.parents.update((item.id, item.trace) for item in items if item.trace)
        self.spans: dict[UUID, Span] = {}
        self.settled: set[UUID] = set()

    def begin(self, messages: Sequence[Message]) -> list[Span]:
        """Open the span of each attempt begun (in the order of ``messages``)."""
        spans = []
        for message in messages:
            span = self.state.tracer.start_span(
                "smeg.attempt",
                context=_parent(self.state, self.parents.get(message.id, NO_TRACE)),
                start_time=self.began,
                attributes={
                    "smeg.message_id": message.message_id,
                    "smeg.channel": message.channel,
                    "smeg.provider": message.last_provider or "",
                    "smeg.attempt": message.attempts,
                },
            )
            self.spans[message.id] = span
            spans.append(span)
        return spans

    def settle(self, message: Message) -> None:
        """The message's outcome is durable: end its attempt's span with the status it reached."""
        if message.status in (DELIVERED, FAILED):
            self.settled.add(message.id)
        span = self.spans.pop(message.id, None)
        if span is not None:
            _end(self.state, span, message.status, error=message.status == FAILED)

    def close(self) -> None:
        """End what is still open (no outcome recorded); remember the trace of every message of the
        batch that is not finished, for its next attempt."""
        for span in self.spans.values():
            _end(self.state, span, "not_recorded", error=True)
        self.spans.clear()
        for aggregate_id, carrier in self.parents.items():
            if carrier and aggregate_id not in self.settled:
                remember_retry(aggregate_id, carrier)


class ProviderCall:
    """A ``smeg.provider_call`` span, current in the calling task until ``finish``."""

    def __init__(self, state: _State, parent: Span, provider: str, channel: str, message_id: str) -> None:
        self.state = state
        self.span = state.tracer.start_span(
            "smeg.provider_call",
            context=state.in_context(parent),
            kind=state.kinds.CLIENT,
            attributes={"smeg.provider": provider, "smeg.channel": channel, "smeg.message_id": message_id},
        )
        self.token = state.attach(state.in_context(self.span))

    def finish(self, outcome: str, *, error_type: str | None = None, status_code: int | None = None) -> None:
        """Leave the span's context (in the task that entered it) and end it."""
        self.state.detach(self.token)
        if status_code is not None:
            self.span.set_attribute("http.response.status_code", status_code)
        if error_type is not None:
            self.span.set_attribute("error.type", error_type)
        _end(self.state, self.span, outcome, error=outcome != "delivered")


def intake_spans(deliveries: Sequence[Delivery]) -> IntakeSpans | None:
    """The intake spans of a batch, or None while tracing is off."""
    state = _state
    return None if state is None else IntakeSpans(state, deliveries)


def attempt_spans(items: Sequence[Traced]) -> AttemptSpans | None:
    """The attempt spans of a worker's batch, or None while tracing is off."""
    state = _state
    return None if state is None else AttemptSpans(state, items)


def provider_call(parent: Span, provider: str, channel: str, message_id: str) -> ProviderCall | None:
    """Open a provider call's span under ``parent`` (an attempt's span), or None while off."""
    state = _state
    return None if state is None else ProviderCall(state, parent, provider, channel, message_id)
