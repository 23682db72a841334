"""Redrive: give failed messages a fresh cycle, from the failed queue (CLI or automatic).

Only non-permanent failures that are still Failed in the store get a ``RetryRequested``; one
already retried or delivered is skipped (the aggregate refuses a second retry) and its entry
acked, as is a permanent failure's entry once its message is no longer Failed (a person retried
or archived it). Entries that are not redriven — permanent failures, entries whose message this store does
not know, unreadable ones, and every entry of a dry run — stay on the queue for an operator,
handed back rather than published again (``FailedQueue.keep``): a run sees each entry
once, and ``limit`` counts only the messages redriven. The store decides, so two redrives never
double up.

The automatic redriver has a budget: at most ``budget`` automatic cycles per message, counted
from the message's own history (``Message.automatic_retries``), so it holds across restarts and
processes. A message past it stays Failed and on the queue until a person acts: the first run
that finds it so logs a warning and marks its entry (``x-smeg-auto-redrives``), later runs keep
it quietly. A person's retry (``smeg retry``, ``smeg redrive``) is never refused, and gives the
automatic redriver a fresh budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka
import structlog

from domain.errors import InvalidRequestError, RedriveBudgetSpentError
from domain.message import DEFAULT_REDRIVE_MAX_CYCLES, FAILED, Message
from domain.ports import FailedEntry, FailedQueue, MessageNotFoundError, MessageRepository
from domain.request import SendRequest, parse_send_request
from smeg_actors.actors.messages import DeliverMessages, GetRedriven, ProviderRecovered, Tick, WorkItem
from smeg_actors.actors.supervisor import Children, Supervised
from smeg_actors.runtime.clock import Clock
from smeg_actors.runtime.logs import message_context

log = structlog.get_logger(__name__)

#: Marks an entry whose message spent the automatic budget (value: the cycles), once warned about.
BUDGET_HEADER = "x-smeg-auto-redrives"

#: ``requested_by`` of an operator's ``smeg redrive``.
OPERATOR_REDRIVE = "redrive"


@dataclass
class RedriveReport:
    """What a redrive did, by outcome."""

    redriven: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    permanent: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    over_budget: list[str] = field(default_factory=list)
    invalid: int = 0

    def summary(self) -> str:
        held = f", kept {len(self.over_budget)} past the automatic budget" if self.over_budget else ""
        return (
            f"redriven {len(self.redriven)}, skipped {len(self.skipped)} (not failed any more),"
            f" kept {len(self.permanent)} permanent{held}, {len(self.unknown)} unknown to this store,"
            f" invalid {self.invalid}"
        )


def redrive(
    store: MessageRepository,
    reader: FailedQueue[Any],
    *,
    clock: Clock,
    limit: int | None = None,
    dry_run: bool = False,
    rate: float | None = None,
    budget: int | None = None,
    on_redriven: Callable[[Message], None] = lambda _m: None,
) -> RedriveReport:
    """Work through the entries on the failed queue now; see the module doc.

    Args:
        limit: stop after this many messages redriven (or, dry, that would be); entries kept or
            skipped do not count.
        rate: at most this many messages redriven per second.
        budget: None for a person's redrive (``requested_by="redrive"``); a number for the
            automatic redriver (``requested_by="auto-redrive"``): its cycles per message.
        on_redriven: called with each message given a fresh cycle.
    """
    report = RedriveReport()
    try:
        # The entries there now: those republished or failing again meanwhile wait for a next run.
        for _ in range(reader.depth()):
            if limit is not None and len(report.redriven) >= limit:
                break
            entry = reader.get()
            if entry is None:
                break
            message = _redrive_entry(store, reader, entry, report, clock, dry_run, budget)
            if message is not None:
                on_redriven(message)
                if rate:
                    time.sleep(1.0 / rate)
    finally:
        reader.release()
    return report


def _redrive_entry(
    store: MessageRepository,
    reader: FailedQueue[Any],
    entry: FailedEntry,
    report: RedriveReport,
    clock: Clock,
    dry_run: bool,
    budget: int | None,
) -> Message | None:
    """Redrive one entry, or keep, skip or mark it; the message given a fresh cycle, if any."""
    try:
        request = parse_send_request(entry.body, correlation_id=entry.correlation_id)
    except InvalidRequestError:
        report.invalid += 1
        reader.keep(entry)
        return None
    if str(entry.headers.get("x-smeg-permanent", "")).lower() == "true":
        if not dry_run and _settled(store, request.message_id):  # a person retried or archived it
            reader.ack(entry)
            report.skipped.append(request.message_id)
            return None
        report.permanent.append(request.message_id)
        reader.keep(entry)
        return None
    if dry_run:
        report.redriven.append(request.message_id)
        reader.keep(entry)
        return None
    try:
        outcome = store.update(Message.create_id(request.message_id), _retry(budget, clock))
    except MessageNotFoundError:
        report.unknown.append(request.message_id)
        reader.keep(entry)
        return None
    if isinstance(outcome.refused, RedriveBudgetSpentError):
        report.over_budget.append(request.message_id)
        _hold_for_a_person(reader, entry, request, outcome.refused.cycles, budget)
        return None
    reader.ack(entry)
    if outcome.message is None:
        report.skipped.append(request.message_id)
        return None
    report.redriven.append(request.message_id)
    return outcome.message


def _settled(store: MessageRepository, message_id: str) -> bool:
    """Whether a permanent failure's message is no longer Failed (a person retried it, and it may
    be delivered by now, or archived it): its entry then tells a person nothing."""
    try:
        return store.get(Message.create_id(message_id)).status != FAILED
    except MessageNotFoundError:
        return False


def _retry(budget: int | None, clock: Clock) -> Callable[[Message], None]:
    """A person's retry, always; an automatic one while the message's budget lasts."""

    def retry(message: Message) -> None:
        if budget is None:
            message.request_retry(OPERATOR_REDRIVE, now=clock())
        else:
            message.request_automatic_retry(budget=budget, now=clock())

    return retry


def _hold_for_a_person(
    reader: FailedQueue[Any], entry: FailedEntry, request: SendRequest, cycles: int, budget: int | None
) -> None:
    """Keep the entry of a message past the budget; the first run to find it warns and marks it."""
    if BUDGET_HEADER in entry.headers:
        reader.keep(entry)
        return
    with message_context(request.message_id, request.correlation_id):
        log.warning("auto_redrive_budget_spent", cycles=cycles, max_cycles=budget)
    reader.republish(entry, headers={BUDGET_HEADER: str(cycles)})


class RedriverActor(Supervised):
    """Starts a rate-limited redrive when a provider that had exhausted messages delivers again.

    Each message gets at most ``max_cycles`` automatic cycles (see the module doc).
    """

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        store: MessageRepository,
        open_reader: Callable[[], FailedQueue[Any]],
        children: Children,
        clock: Clock,
        rate: float,
        max_cycles: int = DEFAULT_REDRIVE_MAX_CYCLES,
        cooldown: float = 60.0,
    ) -> None:
        super().__init__(name, supervisor)
        self.store, self.open_reader, self.children = store, open_reader, children
        self.clock, self.rate, self.cooldown = clock, rate, cooldown
        self.max_cycles = max_cycles
        self.thread: threading.Thread | None = None
        self.last_start = 0.0
        self.total = 0

    def on_receive(self, message: Any) -> Any:
        match message:
            case ProviderRecovered(provider=provider):
                self._maybe_start(provider)
            case Tick():
                pass
            case GetRedriven():
                return self.total
            case _:
                log.warning("unknown_message_dropped", message=repr(message))
        return None

    def _maybe_start(self, provider: str) -> None:
        busy = self.thread is not None and self.thread.is_alive()
        if busy or time.monotonic() - self.last_start < self.cooldown:
            return
        self.last_start = time.monotonic()
        log.info("auto_redrive_started", provider=provider, rate=self.rate)
        self.thread = threading.Thread(target=self._run, name="smeg-redrive", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            reader = self.open_reader()
        except Exception as exc:
            log.warning("auto_redrive_unavailable", error=str(exc)[:200])
            return
        try:
            report = redrive(
                self.store,
                reader,
                clock=self.clock,
                rate=self.rate,
                budget=self.max_cycles,
                on_redriven=self._dispatch,
            )
            self.total += len(report.redriven)
            log.info("auto_redrive_finished", summary=report.summary())
        except Exception as exc:
            log.warning("auto_redrive_failed", error=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            reader.close()

    def _dispatch(self, message: Message) -> None:
        self.children.tell("dispatcher", DeliverMessages((WorkItem(message.id),)))
