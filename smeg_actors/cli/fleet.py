"""Fleet commands: ``smeg messages`` (search), ``smeg failures`` (failure groups), ``smeg retry``
(one message, a group, or a filter, rate-capped, recorded with who and why) and ``smeg archive``
(set failures aside). They read the read models (``adapters.fleet_view``) and change messages
through their aggregates, one at a time, so every change is an event with ``by`` and a reason.

Exit codes: 0 done (a dry run included); 1 refused (unknown id or group, a message that is not
failed); 2 a bad option.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from smeg_actors.cli.support import (
    MAX_REASON,
    CommandError,
    one_line,
    open_store,
    operator,
    parse_time,
    settings_of,
)

if TYPE_CHECKING:
    from adapters.fleet_view import MessageQuery
    from domain.message import Message

STATUS_CHOICES = ("received", "in_flight", "backed_off", "held", "delivered", "failed", "archived")


def who() -> str:
    """``by`` of a change made from the command line."""
    return f"cli:{operator()}"


@click.command("messages")
@click.option(
    "--status", type=click.Choice(STATUS_CHOICES), default=None, help="Only messages in this state."
)
@click.option("--provider", default=None, help="Only messages last sent (or held) for this provider.")
@click.option("--channel", type=click.Choice(("sms", "im")), default=None, help="Only this channel.")
@click.option("--reason", default=None, help="Only messages whose last error contains TEXT.")
@click.option("--since", default=None, help="ISO 8601: received at or after.")
@click.option("--until", default=None, help="ISO 8601: received before.")
@click.option(
    "--failed-since", default=None, help="ISO 8601: failed at or after, whatever became of it since."
)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="A page of N.")
@click.option("--cursor", default=None, help="The next page (printed after a full page).")
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per message.")
@click.pass_context
def messages(ctx: click.Context, /, as_json: bool, limit: int, cursor: str | None, **filters: Any) -> None:
    """Messages, newest first, addresses masked; exit 0 whether or not any matched."""
    from smeg_actors.runtime.fleet import message_items

    settings = settings_of(ctx)
    open_store(settings).close()  # a missing SQLite store is one line, exit 1
    try:
        items, following = message_items(settings, _query(filters), limit=limit, cursor=cursor)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cursor") from None
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


def _query(filters: dict[str, Any]) -> MessageQuery:
    from adapters.fleet_view import MessageQuery

    return MessageQuery(
        status=filters.get("status"),
        provider=filters.get("provider"),
        channel=filters.get("channel"),
        reason=filters.get("reason") or filters.get("reason_filter"),
        since=parse_time(filters.get("since"), "--since"),
        until=parse_time(filters.get("until"), "--until"),
        failed_since=parse_time(filters.get("failed_since"), "--failed-since"),
    )


@click.command("failures")
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per group.")
@click.pass_context
def failures(ctx: click.Context, as_json: bool) -> None:
    """Failed messages grouped by provider, reason class and reason, largest group first."""
    from smeg_actors.runtime.fleet import failure_groups, group_item

    groups = [group_item(g) for g in failure_groups(settings_of(ctx))]
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
    from smeg_actors.runtime.fleet import filtered_failed, group_members

    given = [message_id is not None, group is not None, any(v is not None for v in filters.values())]
    if sum(given) != 1:
        raise click.UsageError("give exactly one of: a MESSAGE_ID, --group ID, or filters (--provider …)")
    if message_id is not None:
        return [message_id]
    settings = settings_of(ctx)
    if group is not None:
        members = group_members(settings, group)
        if members is None:
            raise CommandError(f"no failure group {group} (smeg failures lists them)")
        return members
    return filtered_failed(settings, _query(filters))


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


def _dry_run(
    verb: str,
    ctx: click.Context,
    message_id: str | None,
    ids: list[str],
    change: Callable[[Message], None],
    as_json: bool,
) -> None:
    """Say how many would change; one message named is tried first, so a dry run is refused
    where the real command would be (exit 1, the same line)."""
    from smeg_actors.runtime.fleet import refusal

    if message_id is not None:
        why = refusal(settings_of(ctx), message_id, change)
        _single(message_id, [(message_id, why)] if why else [], verb)
    _report(f"would {verb}", ids, [], {}, as_json)


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
@click.option("--reason", callback=one_line(MAX_REASON), default=None, help="Why (recorded).")
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
    from smeg_actors.runtime.fleet import apply_each, retrying

    ids = _targets(ctx, message_id, group, filters)
    if message_id is None and reason is None:
        raise click.UsageError("a bulk retry needs --reason")
    if dry_run:
        _dry_run("retry", ctx, message_id, ids, retrying(who(), reason or "", None), as_json)
        return
    bulk_id = None if message_id is not None else uuid.uuid4().hex[:12]
    done, refused = apply_each(settings_of(ctx), ids, retrying(who(), reason or "", bulk_id), rate)
    if message_id is not None and not as_json:
        _single(message_id, refused, "retry")
        click.echo(f"retry requested for {message_id}: a fresh cycle of attempts starts now")
        return
    _report("retried", done, refused, {"bulk_id": bulk_id} if bulk_id else {}, as_json)


@click.command("archive")
@click.argument("message_id", required=False)
@_filter_options
@click.option("--reason", callback=one_line(MAX_REASON), required=True, help="Why (recorded).")
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
    from smeg_actors.runtime.fleet import apply_each, archiving

    ids = _targets(ctx, message_id, group, filters)
    if dry_run:
        _dry_run("archive", ctx, message_id, ids, archiving(who(), reason), as_json)
        return
    done, refused = apply_each(settings_of(ctx), ids, archiving(who(), reason))
    if message_id is not None and not as_json:
        _single(message_id, refused, "archive")
        click.echo(f"{message_id} archived: out of the failure groups and redrive until retried")
        return
    _report("archived", done, refused, {}, as_json)
