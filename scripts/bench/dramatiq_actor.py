"""The Dramatiq side of ``scripts/bench_pipeline.py``: one actor doing what smeg's simulated provider does.

The body sleeps ``latency_ms`` and then fails transiently with probability ``transient_rate``
(raising ``dramatiq.Retry``, Dramatiq's own "try again later" exception, which the Retries
middleware backs off from ``min_backoff`` = 200 ms, doubling, for ``max_retries`` = 5). A
middleware appends one line per finished message to a per-process file in ``out_dir``:
``ok <id> <unix time>`` when the body returned, ``failed <id> <unix time>`` when Retries gave
up (the message was nacked to the dead-letter queue). Nothing else is recorded anywhere:
Dramatiq keeps no durable record of a message's life.

Configured from the environment, and only when ``SMEG_BENCH_DQ_QUEUE`` is set (so the bench can
import the constants below without creating a broker). The bench runs the workers as::

    SMEG_BENCH_DQ_QUEUE=... SMEG_BENCH_DQ_OUT=/tmp/dir .venv/bin/dramatiq dramatiq_actor \\
        --path scripts/bench --processes 2 --threads 32
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import Middleware

ACTOR_NAME = "smeg_bench_send"
ENV_QUEUE = "SMEG_BENCH_DQ_QUEUE"
ENV_AMQP_URL = "SMEG_BENCH_DQ_AMQP_URL"
ENV_OUT_DIR = "SMEG_BENCH_DQ_OUT"
ENV_LATENCY_MS = "SMEG_BENCH_DQ_LATENCY_MS"
ENV_TRANSIENT_RATE = "SMEG_BENCH_DQ_TRANSIENT_RATE"
MIN_BACKOFF_MS = 200
MAX_RETRIES = 5
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


class CompletionLog(Middleware):
    """Appends ``ok|failed <id> <time>`` lines to ``<out_dir>/done-<pid>.log`` (O_APPEND writes)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self._fd: int | None = None
        self._pid = 0

    def _write(self, line: str) -> None:
        if self._fd is None or self._pid != os.getpid():
            self._pid = os.getpid()
            path = os.path.join(self.out_dir, f"done-{self._pid}.log")
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(self._fd, line.encode())

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is None:
            self._write(f"ok {message.args[0]} {time.time():.6f}\n")

    def after_nack(self, broker: Any, message: Any) -> None:
        self._write(f"failed {message.args[0]} {time.time():.6f}\n")


def _configure(queue: str) -> None:
    latency = float(os.environ.get(ENV_LATENCY_MS, "0")) / 1000.0
    transient_rate = float(os.environ.get(ENV_TRANSIENT_RATE, "0"))
    broker = RabbitmqBroker(url=os.environ.get(ENV_AMQP_URL, DEFAULT_AMQP_URL))
    broker.add_middleware(CompletionLog(os.environ[ENV_OUT_DIR]))
    dramatiq.set_broker(broker)
    # The bench runs smeg at SMEG_LOG_LEVEL=warning; keep Dramatiq as quiet per message
    # (its "Retrying message ..." lines are INFO).
    logging.getLogger("dramatiq").setLevel(logging.WARNING)

    @dramatiq.actor(
        actor_name=ACTOR_NAME,
        queue_name=queue,
        max_retries=MAX_RETRIES,
        min_backoff=MIN_BACKOFF_MS,
    )
    def send(message_id: str) -> None:
        if latency > 0:
            time.sleep(latency)
        if transient_rate and random.random() < transient_rate:
            raise dramatiq.Retry("simulated transient failure")


if os.environ.get(ENV_QUEUE):
    _configure(os.environ[ENV_QUEUE])
