"""Fleet commands: ``smeg messages`` (search), ``smeg failures`` (failure groups), ``smeg retry``
(one message, a group, or a filter, rate-capped, recorded with who and why) and ``smeg archive``
(set failures aside). They read the read models (``adapters.fleet_view``) and change messages
through their aggregates, one at a time, so every change is an event with ``by`` and a reason.

Exit codes: 0 done (a dry run included); 1 refused (unknown id or group, a message that is not
failed); 2 a bad option.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from smeg_actors.cli.providers import MAX_REASON, _one_line, _operator
from smeg_actors.cli.support import CommandError, open_store, parse_time, settings_of

if TYPE_CHECKING:
    from adapters.fleet_view import MessageRow
    from domain.failures import FailureGroup
    from domain.message import Message
    from smeg_actors.runtime.config import Settings

STATUS_CHOICES = ("received", "in_flight", "backed_off", "held", "delivered", "failed", "archived")


def who() -> str:
    """``by`` of a change made from the command line."""
    return f"cli:{_operator()}"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def _engine(settings: Settings) -> Any:
    from smeg_actors.runtime.factory import read_models_engine

    return read_models_engine(settings)


@click.command("messages")
@click.option(
    "--status", type=click.Choice(STATUS_CHOICES), default=None, help="Only messages in this state."
)
@click.option("--provider", default=None, help="Only messages last sent (or held) for this provider.")
@click.option("--channel", type=click.Choice(("sms", "im")), default=None, help="Only this channel.")
@click.option("--reason", default=None, help="Only messages whose last error contains TEXT.")
@click.option("--since", default=None, help="ISO 8601: received at or after.")
@click.option("--until", default=None, help="ISO 8601: received before.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="A page of N.")
@click.option("--cursor", default=None, help="The next page (printed after a full page).")
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per message.")
@click.pass_context
def messages(ctx: click.Context, /, as_json: bool, limit: int, cursor: str | None, **filters: Any) -> None:
    """Messages, newest first, addresses masked; exit 0 whether or not any matched."""
    from adapters.fleet_view import MessageQuery, list_messages

    query = MessageQuery(
        status=filters["status"],
        provider=filters["provider"],
        channel=filters["channel"],
        reason=filters["reason"],
        since=parse_time(filters["since"], "--since"),
        until=parse_time(filters["until"], "--until"),
    )
    settings = settings_of(ctx)
    engine = _engine(settings)
    try:
        rows, following = list_messages(engine, query, limit=limit, cursor=cursor)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cursor") from None
    finally:
        engine.dispose()
    items = [_item(row, to) for row, to in zip(rows, _addresses(settings, rows), strict=True)]
    if as_json:
        click.echo(json.dumps(items, indent=2))
    else:
        if not items:
            click.echo("no messages match")
        for item in items:
            error = f"  {item['last_error']}" if item["last_error"] else ""
            click.echo(
                f"{item['received_at']}  {item['message_id']:<36} {item['status']:<10} {item['channel']:<3} "
                f"{item['provider'] or '-':<12} {item['attempts']:>2}  {item['to']}{error}"
            )
    if following:
        click.echo(f"more: --cursor {following}", err=True)


def _addresses(settings: Settings, rows: list[MessageRow]) -> list[str]:
    """Each message's recipient, masked, from its aggregate (the read model keeps none)."""
    from domain.request import mask_address

    if not rows:
        return []
    store = open_store(settings)
    try:
        return [mask_address(store.get(row.id).to) for row in rows]
    finally:
        store.close()


def _item(row: MessageRow, to: str) -> dict[str, Any]:
    return {
        "message_id": row.message_id,
        "status": row.status,
        "channel": row.channel,
        "provider": row.provider,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "to": to,
        "received_at": _iso(row.received_at),
        "updated_at": _iso(row.updated_at),
    }


def _groups(settings: Settings) -> list[FailureGroup]:
    from adapters.fleet_view import failed_rows
    from domain.failures import group_failures

    engine = _engine(settings)
    try:
        return group_failures(failed_rows(engine))
    finally:
        engine.dispose()


def _group_json(group: FailureGroup) -> dict[str, Any]:
    return {
        "group_id": group.group_id,
        "provider": group.provider,
        "reason_class": group.reason_class,
        "reason": group.reason,
        "count": group.count,
        "first_failed_at": _iso(group.first_failed_at),
        "last_failed_at": _iso(group.last_failed_at),
        "sample_message_id": group.sample_message_id,
    }


@click.command("failures")
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per group.")
@click.pass_context
def failures(ctx: click.Context, as_json: bool) -> None:
    """Failed messages grouped by provider, reason class and reason, largest group first."""
    groups = [_group_json(g) for g in _groups(settings_of(ctx))]
    if as_json:
        click.echo(json.dumps(groups, indent=2))
        return
    if not groups:
        click.echo("no failed messages")
    for g in groups:
        click.echo(
            f"{g['group_id']}  {g['count']:>6}  {g['provider']:<12} {g['reason_class']:<9} {g['reason']}"
            f"  (last {g['last_failed_at']}, e.g. {g['sample_message_id']})"
        )


def _targets(
    ctx: click.Context, message_id: str | None, group: str | None, filters: dict[str, Any]
) -> list[str]:
    """The message ids a bulk command acts on: one, a failure group's, or the failed ones a
    filter selects; exactly one way must be given."""
    from adapters.fleet_view import MessageQuery, list_messages

    given = [message_id is not None, group is not None, any(v is not None for v in filters.values())]
    if sum(given) != 1:
        raise click.UsageError("give exactly one of: a MESSAGE_ID, --group ID, or filters (--provider …)")
    if message_id is not None:
        return [message_id]
    settings = settings_of(ctx)
    if group is not None:
        found = [g for g in _groups(settings) if g.group_id == group]
        if not found:
            raise CommandError(f"no failure group {group} (smeg failures lists them)")
        return found[0].message_ids
    query = MessageQuery(
        status="failed",
        provider=filters["provider"],
        channel=filters["channel"],
        reason=filters["reason_filter"],
        since=parse_time(filters["since"], "--since"),
        until=parse_time(filters["until"], "--until"),
    )
    engine = _engine(settings)
    ids: list[str] = []
    cursor: str | None = None
    try:
        while True:
            rows, cursor = list_messages(engine, query, limit=1000, cursor=cursor)
            ids += [row.message_id for row in rows]
            if cursor is None:
                return ids
    finally:
        engine.dispose()


F = TypeVar("F", bound=Callable[..., Any])


def _filter_options(command: F) -> F:
    """The options that choose the messages of a bulk command."""
    for option in reversed(
        (
            click.option("--group", default=None, help="Every message of this failure group."),
            click.option("--provider", default=None, help="Filter: failed through this provider."),
            click.option(
                "--channel", type=click.Choice(("sms", "im")), default=None, help="Filter: channel."
            ),
            click.option(
                "--reason-contains", "reason_filter", default=None, help="Filter: last error has TEXT."
            ),
            click.option("--since", default=None, help="Filter: received at or after (ISO 8601)."),
            click.option("--until", default=None, help="Filter: received before (ISO 8601)."),
            click.option("--dry-run", is_flag=True, help="Say how many; change nothing."),
        )
    ):
        command = option(command)
    return command


def _apply(
    ctx: click.Context, ids: list[str], change: Callable[[Message], None], rate: float | None
) -> tuple[list[str], list[tuple[str, str]]]:
    """Each message changed on its own (its own event); (changed, [(id, why not)])."""
    from adapters.event_store import MessageNotFoundError
    from domain.message import Message

    store = open_store(settings_of(ctx), must_exist=False)
    done: list[str] = []
    refused: list[tuple[str, str]] = []
    try:
        for message_id in ids:
            started = time.monotonic()
            try:
                outcome = store.update(Message.create_id(message_id), change)
            except MessageNotFoundError:
                refused.append((message_id, "unknown message id"))
                continue
            if outcome.refused is not None:
                refused.append((message_id, str(outcome.refused)))
            elif outcome.message is None:
                refused.append((message_id, "changed concurrently, try again"))
            else:
                done.append(message_id)
            if rate:
                time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - started)))
    finally:
        store.close()
    return done, refused


def _report(
    verb: str, done: list[str], refused: list[tuple[str, str]], extra: dict[str, Any], as_json: bool
) -> None:
    if as_json:
        click.echo(json.dumps({"count": len(done), **extra, "refused": [list(r) for r in refused]}, indent=2))
    else:
        click.echo(f"{verb} {len(done)} message(s)" + "".join(f" ({k} {v})" for k, v in extra.items()))
        for message_id, why in refused[:20]:
            click.echo(f"  not {message_id}: {why}", err=True)
    if refused and not done:
        raise CommandError(f"nothing {verb}: {refused[0][0]}: {refused[0][1]}")


def _single(message_id: str, refused: list[tuple[str, str]], verb: str) -> None:
    """One message named: its refusal is the one line of the error (exit 1)."""
    if refused:
        why = refused[0][1]
        raise CommandError(
            f"unknown message id: {message_id}"
            if why == "unknown message id"
            else f"cannot {verb} {message_id}: {why}"
        )


@click.command("retry")
@click.argument("message_id", required=False)
@_filter_options
@click.option(
    "--rate", type=click.FloatRange(0.1, 10000), default=None, help="At most N messages per second."
)
@click.option("--reason", callback=_one_line(MAX_REASON), default=None, help="Why (recorded).")
@click.option("--json", "as_json", is_flag=True, help="The outcome as one JSON object.")
@click.pass_context
def retry(
    ctx: click.Context,
    /,
    message_id: str | None,
    group: str | None,
    dry_run: bool,
    rate: float | None,
    reason: str | None,
    as_json: bool,
    **filters: Any,
) -> None:
    """Start a fresh cycle of attempts on Failed (or archived) messages: MESSAGE_ID, a failure
    --group, or the failed messages the filters select. Each records RetryRequested with who
    (cli:USER), the reason and, in bulk, a bulk id."""
    from smeg_actors.runtime.clock import utc_now

    ids = _targets(ctx, message_id, group, filters)
    if message_id is None and reason is None:
        raise click.UsageError("a bulk retry needs --reason")
    if dry_run:
        _report("would retry", ids, [], {}, as_json)
        return
    bulk_id = None if message_id is not None else uuid.uuid4().hex[:12]
    by = who()

    def change(message: Message) -> None:
        message.request_retry(by, now=utc_now(), reason=reason or "", bulk_id=bulk_id, archived_too=True)

    done, refused = _apply(ctx, ids, change, rate)
    if message_id is not None and not as_json:
        _single(message_id, refused, "retry")
        click.echo(f"retry requested for {message_id}: a fresh cycle of attempts starts now")
        return
    _report("retried", done, refused, {"bulk_id": bulk_id} if bulk_id else {}, as_json)


@click.command("archive")
@click.argument("message_id", required=False)
@_filter_options
@click.option("--reason", callback=_one_line(MAX_REASON), required=True, help="Why (recorded).")
@click.option("--json", "as_json", is_flag=True, help="The outcome as one JSON object.")
@click.pass_context
def archive(
    ctx: click.Context,
    /,
    message_id: str | None,
    group: str | None,
    dry_run: bool,
    reason: str,
    as_json: bool,
    **filters: Any,
) -> None:
    """Set Failed messages aside (Archived, with who and why): they leave the failure groups,
    the failures alert and redrive, stay in history, and come back with smeg retry."""
    from smeg_actors.runtime.clock import utc_now

    ids = _targets(ctx, message_id, group, filters)
    if dry_run:
        _report("would archive", ids, [], {}, as_json)
        return
    by = who()
    done, refused = _apply(ctx, ids, lambda m: m.archive(by, reason=reason, now=utc_now()), None)
    if message_id is not None and not as_json:
        _single(message_id, refused, "archive")
        click.echo(f"{message_id} archived: out of the failure groups and redrive until retried")
        return
    _report("archived", done, refused, {}, as_json)
