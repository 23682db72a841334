"""Prometheus metrics of ``smeg run``, correct across ``--processes`` (prometheus_client's
multiprocess mode: each process writes its samples to files in one directory, the ops server
of the parent adds them up).

``ops_http.use_directory`` must run before this module is imported (prometheus_client picks its
value class at import): ``smeg run`` calls it first thing. Elsewhere (tests, the demo) the metrics
live in this process's memory and cost the same.
"""

from __future__ import annotations

import functools
from collections import Counter as Tally
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

#: Seconds buckets for provider calls and end-to-end delivery (5 ms to 1 h).
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

received = Counter("smeg_messages_received", "Send requests recorded as Received.", ["channel"])
attempts = Counter(
    "smeg_attempts",
    "Delivery attempts by outcome: delivered, transient, permanent, timeout.",
    ["provider", "outcome"],
)
failed = Counter(
    "smeg_messages_failed",
    "Messages that ended Failed: exhausted (attempts ran out) or permanent (the provider refused).",
    ["provider", "reason_class"],
)
rejected = Counter("smeg_messages_rejected", "Requests refused at the edge (invalid, undecodable, poison).")
held = Counter(
    "smeg_messages_held",
    "Held events: a message waits for its provider (open, disabled, paced).",
    ["provider"],
)
provider_call_seconds = Histogram(
    "smeg_provider_call_seconds", "Provider call latency.", ["provider"], buckets=CALL_BUCKETS
)
delivery_seconds = Histogram(
    "smeg_delivery_seconds",
    "Received to Delivered (queue wait, backoffs and holds included): the critical time.",
    ["provider", "channel"],
    buckets=DELIVERY_BUCKETS,
)
store_write_seconds = Histogram(
    "smeg_store_write_seconds", "One batch's commit to the event store.", buckets=CALL_BUCKETS
)
restarts = Counter("smeg_supervisor_restarts", "Actors restarted by their supervisor.", ["actor"])
retries_pending = Gauge(
    "smeg_retries_pending",
    "Backed-off and held messages the schedulers wait for.",
    multiprocess_mode="livesum",
)
retry_oldest_overdue = Gauge(
    "smeg_retry_oldest_overdue_seconds",
    "How far past its retry_at the most overdue pending retry is (0: none overdue).",
    multiprocess_mode="livemax",
)
queue_messages = Gauge(
    "smeg_queue_messages",
    "Messages ready in smeg's queues: send, failed, rejected (read every few seconds).",
    ["queue"],
    multiprocess_mode="mostrecent",
)
messages_in_flight = Gauge(
    "smeg_messages_in_flight",
    "Provider calls under way (an attempt sent, its answer not yet back).",
    multiprocess_mode="livesum",
)
send_queue_oldest = Gauge(
    "smeg_send_queue_oldest_seconds",
    "An upper bound on the oldest waiting send request's age: seconds since the send queue was "
    "last seen empty (0 while it is).",
    multiprocess_mode="mostrecent",
)
projection_lag_events = Gauge(
    "smeg_projection_lag_events",
    "Events in the store a read model (or the events exchange) has not applied yet.",
    ["projection"],
    multiprocess_mode="mostrecent",
)
projection_lag_seconds = Gauge(
    "smeg_projection_lag_seconds",
    "Age of the oldest event a read model (or the events exchange) has not applied yet.",
    ["projection"],
    multiprocess_mode="mostrecent",
)
canary_seconds = Gauge(
    "smeg_canary_seconds",
    "The latest canary's publish to Delivered, in seconds (only where a canary is configured).",
    multiprocess_mode="mostrecent",
)
canary_misses = Counter("smeg_canary_misses", "Canaries not delivered within the canary rule's SLO.")
circuit_state = Gauge(
    "smeg_circuit_state",
    "Each provider's state as this process obeys it: 0 closed, 1 half-open, 2 open, 3 disabled.",
    ["provider"],
    multiprocess_mode="livemax",
)


@functools.cache
def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once (the lookup costs as much as the increment)."""
    return metric.labels(*labels)


def add(metric: Counter, tally: Tally[tuple[str, ...]]) -> None:
    """A batch's counts, one increment per label set."""
    for labels, n in tally.items():
        child(metric, *labels).inc(n)


#: ``smeg_circuit_state`` values.
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2, "disabled": 3}
