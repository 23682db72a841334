"""An in-memory broker behind the same ports as RabbitMQ, for the demo and unit tests.

It keeps RabbitMQ's contract that matters here: unacked deliveries stay pending, invalid
payloads go to a rejected list with the reason, failed requests to a failed list.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Sequence

import orjson

from domain.errors import InvalidRequestError
from domain.ports import Delivery
from domain.request import SendRequest, parse_send_request


class MemoryIntake:
    """A queue of raw payloads consumed by a thread, in batches."""

    def __init__(self, *, batch_size: int = 200, known_providers: set[str] | None = None) -> None:
        self.batch_size = batch_size
        self.known_providers = known_providers
        self.hold: Callable[[], bool] = lambda: False
        self.rejected: list[tuple[bytes, str]] = []
        self.unacked: dict[int, bytes] = {}
        self.acked = 0
        self._queue: queue.Queue[tuple[int, bytes, str | None]] = queue.Queue()
        self._tags = itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, body: bytes, *, correlation_id: str | None = None) -> None:
        self._queue.put((next(self._tags), body, correlation_id))

    def start(self, on_batch: Callable[[list[Delivery]], None], on_lost: Callable[[str], None]) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(on_batch,), name="smeg-memory-intake", daemon=True
        )
        self._thread.start()

    def ack(self, tags: Sequence[int]) -> None:
        with self._lock:
            for tag in tags:
                if self.unacked.pop(tag, None) is not None:
                    self.acked += 1

    def release(self, tags: Sequence[int]) -> None:
        with self._lock:
            bodies = [(tag, self.unacked.pop(tag)) for tag in tags if tag in self.unacked]
        for tag, body in bodies:
            self._queue.put((tag, body, None))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self, on_batch: Callable[[list[Delivery]], None]) -> None:
        while not self._stop.is_set():
            if self.hold():
                self._stop.wait(0.01)
                continue
            batch = self._take()
            if batch:
                on_batch(batch)

    def _take(self) -> list[Delivery]:
        batch: list[Delivery] = []
        try:
            item = self._queue.get(timeout=0.05)
        except queue.Empty:
            return batch
        while True:
            self._accept(item, batch)
            if len(batch) >= self.batch_size:
                return batch
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch

    def _accept(self, item: tuple[int, bytes, str | None], batch: list[Delivery]) -> None:
        tag, body, correlation_id = item
        try:
            request = parse_send_request(body, correlation_id=correlation_id, strict_loads=orjson.loads)
            if self.known_providers is not None and request.provider not in (
                None,
                *self.known_providers,
            ):
                raise InvalidRequestError(f"unknown provider: {request.provider}")
        except InvalidRequestError as exc:
            self.rejected.append((body, str(exc)))
            return
        with self._lock:
            self.unacked[tag] = body
        batch.append(Delivery(tag=tag, request=request))


class MemoryFailurePublisher:
    """Collects failed requests (the demo's dead-letter queue)."""

    def __init__(self) -> None:
        self.failed: list[tuple[SendRequest, dict[str, str]]] = []
        self._lock = threading.Lock()

    def publish_failed(self, request: SendRequest, headers: dict[str, str]) -> None:
        with self._lock:
            self.failed.append((request, headers))
