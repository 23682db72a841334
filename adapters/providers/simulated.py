"""An in-process provider with configurable latency, failure rates and outages.

For the demo and benchmarks: it exercises retries, backoff and dead-lettering without a network.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from domain.ports import (
    OutboundMessage,
    PermanentDeliveryError,
    ProviderReceipt,
    TransientDeliveryError,
)


class SimulatedProvider:
    """Each send waits ``latency_ms``, then fails or succeeds by one random draw.

    The draw and the receipt id both come from one ``random.Random`` (seeded when ``seed`` is
    given), so a run of sends one after another is reproducible. The lock covers only the draws;
    the wait is an ``asyncio.sleep``, so concurrent calls overlap as they would against a real
    provider.
    """

    def __init__(
        self,
        name: str,
        *,
        latency_ms: float = 0.0,
        transient_rate: float = 0.0,
        permanent_rate: float = 0.0,
        outages: Sequence[tuple[float, float]] = (),
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start the outage clock now.

        Args:
            name: the provider's configured name.
            latency_ms: added to every send, outages and failures included.
            transient_rate: probability (0..1) that a send raises TransientDeliveryError.
            permanent_rate: probability (0..1) that a send raises PermanentDeliveryError; the
                two rates together must not exceed 1 (``build_provider`` checks).
            outages: ``(start_s, end_s)`` windows, seconds since creation by ``clock``, during
                which every send fails transiently with status 503.
            seed: makes the failure sequence and receipt ids reproducible.
            clock: monotonic seconds; injectable so tests cross outage windows without sleeping.
        """
        self.name = name
        self.latency = latency_ms / 1000.0
        self.transient_rate = transient_rate
        self.permanent_rate = permanent_rate
        self.outages = tuple((float(start), float(end)) for start, end in outages)
        self._clock = clock
        self._started = clock()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    async def send(self, message: OutboundMessage) -> ProviderReceipt:
        """Simulate one delivery.

        Raises:
            TransientDeliveryError: during an outage ("simulated outage", 503) or by chance.
            PermanentDeliveryError: by chance, with ``permanent_rate``.
        """
        with self._lock:
            roll = self._rng.random()
            receipt = uuid.UUID(int=self._rng.getrandbits(128), version=4).hex
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if self.in_outage():
            raise TransientDeliveryError("simulated outage", status_code=503)
        if roll < self.permanent_rate:
            raise PermanentDeliveryError("simulated permanent failure", status_code=400)
        if roll < self.permanent_rate + self.transient_rate:
            raise TransientDeliveryError("simulated transient failure", status_code=503)
        return ProviderReceipt(f"sim-{receipt}")

    def in_outage(self) -> bool:
        """Whether now falls in one of the configured ``[start_s, end_s)`` windows."""
        elapsed = self._clock() - self._started
        return any(start <= elapsed < end for start, end in self.outages)

    def check_health(self) -> None:
        """Always healthy, even during an outage.

        Outages are what retries and backoff are for; failing the start-up check would stop the
        demo from showing them.
        """

    async def aclose(self) -> None:
        """Nothing to release; present so every provider can be closed alike."""
