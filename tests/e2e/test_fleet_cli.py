"""Fleet commands as an operator runs them: ``smeg messages``, ``smeg failures``, a bulk
``smeg retry`` of a failure group (dry run, rate cap, who and why recorded), ``smeg archive`` and
back. The store is SQLite; the read models are caught up as ``smeg run`` would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.sql import make_engine, read_models_beside
from domain.message import Message
from smeg_actors.runtime.read_models import ReadModelSet, runners
from tests.e2e.conftest import run_cli, smeg_env
from tests.e2e.test_cli import at, change, opened, receive, seed_delivered_after_one_backoff, seed_failed


def catch_up(url: str) -> None:
    with opened(url) as store:
        engine = make_engine(read_models_beside(url))
        try:
            ReadModelSet(store, runners(store, engine)).catch_up()
        finally:
            engine.dispose()


def refused(store: Any, message_id: str, reason: str) -> None:
    """Failed at once: the provider refused it with ``reason``."""
    receive(store, message_id, at(0))
    change(store, message_id, lambda m: m.start_attempt("prov-b", now=at(1)))
    change(
        store,
        message_id,
        lambda m: m.record_permanent_failure(reason, error="Refused", now=at(2), status_code=400),
    )


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """12 messages failed the same way through prov-b (numbers differ), 3 exhausted through
    prov-a, 1 permanent through prov-a, 2 delivered."""
    url = f"sqlite:///{tmp_path}/smeg.db"
    with opened(url) as store:
        for n in range(12):
            refused(store, f"blocked-{n}", f"http 400: number +4477009{n:05d} is blocked")
        for n in range(3):
            seed_failed(store, f"exhausted-{n}", permanent=False)
        seed_failed(store, "perm-0", permanent=True)
        for n in range(2):
            seed_delivered_after_one_backoff(store, f"ok-{n}")
    catch_up(url)
    return url, smeg_env(SMEG_DATABASE_URL=url)


def cli_json(env: dict[str, str], *args: str) -> Any:
    result = run_cli(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_failures_are_grouped_by_provider_class_and_reason_without_particulars(
    fleet: tuple[str, dict[str, str]],
) -> None:
    _, env = fleet
    groups = cli_json(env, "failures")
    summary = [(g["provider"], g["reason_class"], g["count"]) for g in groups]
    assert summary == [("prov-b", "permanent", 12), ("prov-a", "exhausted", 3), ("prov-a", "permanent", 1)]
    blocked = groups[0]
    assert blocked["reason"] == "http 400: number <n> is blocked"
    assert blocked["sample_message_id"].startswith("blocked-")
    assert set(blocked) >= {"group_id", "first_failed_at", "last_failed_at"}
    assert cli_json(env, "failures")[0]["group_id"] == blocked["group_id"]  # stable


def test_messages_lists_newest_first_with_filters_masked_addresses_and_pages(
    fleet: tuple[str, dict[str, str]],
) -> None:
    _, env = fleet
    failed = cli_json(env, "messages", "--status", "failed", "--provider", "prov-a")
    assert sorted(m["message_id"] for m in failed) == ["exhausted-0", "exhausted-1", "exhausted-2", "perm-0"]
    item = failed[0]
    assert set(item) >= {"message_id", "status", "channel", "provider", "attempts", "last_error", "to"}
    assert "7700900" not in item["to"] and item["to"].endswith("0123")  # masked
    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(10):
        result = run_cli(env, "messages", "--limit", "5", "--json", *cursor)
        assert result.returncode == 0, result.stderr
        seen += [m["message_id"] for m in json.loads(result.stdout)]
        if "--cursor" not in result.stderr:
            break
        cursor = ["--cursor", result.stderr.split("--cursor", 1)[1].split()[0]]
    assert len(seen) == len(set(seen)) == 18  # every message once, across pages
    assert cli_json(env, "messages", "--reason", "blocked", "--limit", "100").__len__() == 12
    bad = run_cli(env, "messages", "--cursor", "nonsense")
    assert bad.returncode == 2 and "cursor" in bad.stderr


def test_a_group_is_retried_in_bulk_at_the_rate_asked_with_who_and_why(
    fleet: tuple[str, dict[str, str]],
) -> None:
    url, env = fleet
    [blocked, *_] = cli_json(env, "failures")
    # A dry run counts and changes nothing
    dry = cli_json(env, "retry", "--group", blocked["group_id"], "--dry-run", "--reason", "unblocked")
    assert dry["count"] == 12
    with opened(url) as store:
        assert store.get(Message.create_id("blocked-0")).status == "failed"
    # A bulk retry needs a reason
    assert run_cli(env, "retry", "--group", blocked["group_id"]).returncode == 2
    # The real one, capped at 20/s
    done = cli_json(
        env, "retry", "--group", blocked["group_id"], "--rate", "20", "--reason", "number unblocked"
    )
    assert done["count"] == 12 and done["bulk_id"]
    with opened(url) as store:
        moments = sorted(store.history(Message.create_id(f"blocked-{n}"))[-1].timestamp for n in range(12))
        rate = 11 / (moments[-1] - moments[0]).total_seconds()
        print(f"bulk retry rate: {rate:.1f} msgs/s (cap 20)")
        assert 15 <= rate <= 20.5  # the cap, and not far below it
        for n in range(12):
            message = store.get(Message.create_id(f"blocked-{n}"))
            assert message.status == "received"
            retried = store.history(message.id)[-1]
            assert type(retried).__name__ == "RetryRequested"
            assert retried.requested_by.startswith("cli:") and retried.reason == "number unblocked"
            assert retried.bulk_id == done["bulk_id"]


def test_archive_takes_failures_out_of_the_groups_and_a_retry_brings_one_back(
    fleet: tuple[str, dict[str, str]],
) -> None:
    url, env = fleet
    groups = {g["provider"] + g["reason_class"]: g for g in cli_json(env, "failures")}
    archived = cli_json(
        env, "archive", "--group", groups["prov-aexhausted"]["group_id"], "--reason", "test numbers"
    )
    assert archived["count"] == 3
    catch_up(url)
    assert [g["provider"] + g["reason_class"] for g in cli_json(env, "failures")] == [
        "prov-bpermanent",
        "prov-apermanent",
    ]
    assert len(cli_json(env, "messages", "--status", "archived")) == 3
    # Redrive-style retries leave an archived message be; a person's retry by id brings it back
    with opened(url) as store:
        outcome = store.update(
            Message.create_id("exhausted-0"), lambda m: m.request_retry("auto-redrive", now=at(20))
        )
        assert outcome.refused is not None
    result = run_cli(env, "retry", "exhausted-0", "--reason", "one more try")
    assert result.returncode == 0, result.stderr
    with opened(url) as store:
        history = [type(e).__name__ for e in store.history(Message.create_id("exhausted-0"))]
    assert history[-2:] == ["Archived", "RetryRequested"]
    shown = run_cli(env, "history", "exhausted-0")
    assert "Archived" in shown.stdout and "test numbers" in shown.stdout
    # Archiving what is not failed is refused with one line, exit 1
    again = run_cli(env, "archive", "ok-0", "--reason", "x")
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "not failed" in again.stderr
    # and so is its dry run, with the same line: a dry run promises only what a real run would do
    dry = run_cli(env, "archive", "ok-0", "--reason", "x", "--dry-run")
    assert (dry.returncode, dry.stderr) == (again.returncode, again.stderr)
    dry_retry = run_cli(env, "retry", "ok-1", "--dry-run")
    assert dry_retry.returncode == 1 and "already delivered" in dry_retry.stderr
    assert run_cli(env, "retry", "exhausted-1", "--dry-run").stdout.startswith("would retry 1")


def test_a_bulk_command_needs_exactly_one_way_to_choose(fleet: tuple[str, dict[str, str]]) -> None:
    _, env = fleet
    assert run_cli(env, "retry", "perm-0", "--group", "abc", "--reason", "x").returncode == 2
    assert run_cli(env, "archive", "--reason", "x").returncode == 2
    unknown = run_cli(env, "retry", "--group", "000000000000", "--reason", "x")
    assert unknown.returncode == 1 and "no failure group" in unknown.stderr
