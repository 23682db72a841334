"""Which deliveries of one channel one ``multiple=True`` ack may settle (the consumer's bookkeeping)."""

from __future__ import annotations

from collections.abc import Sequence


class AckWindow:
    """Which deliveries one ``multiple=True`` ack may settle now (consumer thread only).

    Batches finish out of order (several intake actors take them in turn). Acking a batch that
    finished before a lower one tag by tag cost a frame and a flush of the connection each, on
    the consumer thread every request passes through; instead a finished tag waits until every
    lower tag still pending is settled, and one ``multiple=True`` ack then covers them all.
    """

    def __init__(self) -> None:
        self.pending: set[int] = set()
        self.done: set[int] = set()

    def delivered(self, tag: int) -> None:
        self.pending.add(tag)

    def finished(self, tags: Sequence[int]) -> int | None:
        """``tags`` are durable; the tag to ack with ``multiple=True``, if any may be now."""
        self.pending.difference_update(tags)
        self.done.update(tags)
        return self._settled()

    def released(self, tags: Sequence[int]) -> int | None:
        """``tags`` went back to the broker; finished tags above them may now be acked."""
        self.pending.difference_update(tags)
        self.done.difference_update(tags)
        return self._settled()

    def leftover(self) -> list[int]:
        """Finished tags still waiting on a lower one (to ack one by one when closing)."""
        left, self.done = sorted(self.done), set()
        return left

    def _settled(self) -> int | None:
        if not self.done:
            return None
        if self.pending:
            low = min(self.pending)
            ready = [tag for tag in self.done if tag < low]
        else:
            ready = list(self.done)
        if not ready:
            return None
        self.done.difference_update(ready)
        return max(ready)
