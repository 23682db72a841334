"""``smeg providers`` as a subprocess: the listing (text and --json), the kill switch recorded
with who and why, and every refusal a one-line error with its documented exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from adapters.event_store import Change, MessageStore
from adapters.sql import make_engine, read_models_beside
from domain.message import Message
from domain.provider_health import ProviderHealth
from smeg_actors.runtime.read_models import ReadModelSet, runners
from tests.e2e.conftest import ROOT, run_cli, smeg_env

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)


def configured(tmp_path: Path) -> tuple[dict[str, str], str]:
    url = f"sqlite:///{tmp_path}/smeg.db"
    env = smeg_env(SMEG_DATABASE_URL=url, SMEG_PROVIDER_URL="http://127.0.0.1:9/send")
    return env, url


def test_a_new_provider_is_listed_closed_with_nothing_held(tmp_path: Path) -> None:
    env, url = configured(tmp_path)
    MessageStore(url).close()
    listed = run_cli(env, "providers", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert {k: row[k] for k in ("name", "state", "failure_ratio", "held", "since")} == {
        "name": "default",
        "state": "closed",
        "failure_ratio": 0.0,
        "held": 0,
        "since": None,
    }
    assert run_cli(env, "providers").stdout.split()[:4] == ["default", "closed", "held", "0"]


def test_disable_is_recorded_with_who_and_why_and_held_messages_are_counted(tmp_path: Path) -> None:
    env, url = configured(tmp_path)
    disabled = run_cli(env, "providers", "disable", "default", "--reason", "incident 42", "--by", "alice")
    assert disabled.returncode == 0, disabled.stderr
    assert "disabled by alice" in disabled.stdout
    store = MessageStore(url)
    try:
        [event] = store.history(ProviderHealth.create_id("default"))[1:]
        assert (type(event).__name__, event.by, event.reason) == ("ProviderDisabled", "alice", "incident 42")
        _held_message(store, url)
    finally:
        store.close()
    [row] = json.loads(run_cli(env, "providers", "--json").stdout)
    assert (row["state"], row["held"], row["disabled_by"], row["disabled_reason"]) == (
        "disabled",
        1,
        "alice",
        "incident 42",
    )
    assert datetime.fromisoformat(row["since"]) <= datetime.now(timezone.utc)
    enabled = run_cli(env, "providers", "enable", "default", "--by", "bob")
    assert enabled.returncode == 0 and "enabled by bob" in enabled.stdout
    assert json.loads(run_cli(env, "providers", "--json").stdout)[0]["state"] == "closed"


def test_refusals_are_one_line_errors_with_their_exit_codes(tmp_path: Path) -> None:
    env, url = configured(tmp_path)
    MessageStore(url).close()
    assert run_cli(env, "providers", "disable", "default", "--reason", "r", "--by", "alice").returncode == 0
    again = run_cli(env, "providers", "disable", "default", "--reason", "r")
    assert (again.returncode, again.stderr.strip()) == (1, "smeg: default: already disabled by alice")
    unknown = run_cli(env, "providers", "disable", "nope", "--reason", "r")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "smeg: not a configured provider: nope (configured: default)"
    no_reason = run_cli(env, "providers", "disable", "default")
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    assert run_cli(env, "providers", "enable", "default").returncode == 0
    not_disabled = run_cli(env, "providers", "enable", "default")
    assert (not_disabled.returncode, not_disabled.stderr.strip()) == (1, "smeg: default: not disabled")
    missing = run_cli(smeg_env(SMEG_DATABASE_URL=f"sqlite:///{tmp_path}/typo.db"), "providers")
    assert missing.returncode == 3 and "no event store" in missing.stderr
    assert not (tmp_path / "typo.db").exists()


def _held_message(store: MessageStore, url: str) -> None:
    message = Message.receive(
        message_id="m-1", channel="sms", to="+447700900123", body="hi", correlation_id="c", now=T0
    )
    message.hold("default", until=T0 + timedelta(seconds=5), reason="provider disabled", now=T0)
    assert store.commit([Change(load=lambda: message, cached=message)])[0].saved
    engine = make_engine(read_models_beside(url))
    try:
        ReadModelSet(store, runners(store, engine)).catch_up()
    finally:
        engine.dispose()


def test_a_bad_circuit_table_stops_smeg_run_before_it_checks_anything(tmp_path: Path) -> None:
    config = tmp_path / "smeg.toml"
    config.write_text(
        '[providers.sms-eu]\ntype = "http"\nurl = "https://sms.example/send"\n'
        "[providers.sms-eu.circuit]\ntrip_ratio = 1.5\n"
    )
    env = smeg_env(SMEG_DATABASE_URL=f"sqlite:///{tmp_path}/smeg.db")
    result = run_cli(env, "--config", str(config), "run", timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == "smeg: provider sms-eu: circuit: trip_ratio must be in (0, 1]"


@pytest.mark.parametrize(
    ("option", "value", "why"),
    [
        ("--reason", "line one\nline two", "one line of text"),
        ("--reason", "red \x1b[31malert", "one line of text"),
        ("--reason", "x" * 201, "1-200 characters"),
        ("--reason", "   ", "1-200 characters"),
        ("--by", "a" * 65, "1-64 characters"),
        ("--by", "ev\re", "one line of text"),
    ],
)
def test_a_hostile_reason_or_name_is_refused_at_the_edge_and_nothing_is_recorded(
    tmp_path: Path, option: str, value: str, why: str
) -> None:
    env, url = configured(tmp_path)
    MessageStore(url).close()
    options = {"--reason": "maintenance", "--by": "alice", option: value}
    result = run_cli(env, "providers", "disable", "default", *[x for kv in options.items() for x in kv])
    assert result.returncode == 2
    assert result.stderr.strip() == f"smeg: Invalid value for '{option}': must be {_rule(why)}"
    store = MessageStore(url)
    try:
        assert store.history(ProviderHealth.create_id("default")) == []
    finally:
        store.close()


def test_undecodable_bytes_in_a_reason_are_refused(tmp_path: Path) -> None:
    env, url = configured(tmp_path)
    MessageStore(url).close()
    result = subprocess.run(
        [sys.executable, "-m", "smeg_actors", "providers", "disable", "default", "--reason", b"caf\xe9"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "must be one line of text, without control characters" in result.stderr


def _rule(why: str) -> str:
    return "one line of text, without control characters" if why == "one line of text" else why


def test_the_listing_shows_each_provider_s_rate_limit_and_fallbacks(tmp_path: Path) -> None:
    config = tmp_path / "smeg.toml"
    config.write_text(
        '[providers.a]\ntype = "http"\nurl = "http://127.0.0.1:9/a"\nfallback = ["b"]\nrate_limit = 50\n'
        '[providers.b]\ntype = "http"\nurl = "http://127.0.0.1:9/b"\n'
    )
    url = f"sqlite:///{tmp_path}/smeg.db"
    env = smeg_env(SMEG_DATABASE_URL=url, SMEG_CONFIG=str(config))
    MessageStore(url).close()
    rows = json.loads(run_cli(env, "providers", "--json").stdout)
    assert [(r["name"], r["rate_limit"], r["fallback"]) for r in rows] == [
        ("a", 50.0, ["b"]),
        ("b", None, []),
    ]
    text = run_cli(env, "providers").stdout.splitlines()
    assert text[0].endswith("rate limit 50/s  fallback b") and "rate" not in text[1]
    config.write_text(config.read_text().replace("rate_limit = 50", "rate_limit = -1"))
    bad = run_cli(env, "providers")
    assert (bad.returncode, bad.stderr.strip()) == (
        2,
        "smeg: provider a: rate_limit must be a number of messages/s, 0.01 to 1000000",
    )


def test_check_and_run_refuse_a_route_to_an_unknown_provider_before_any_dependency(tmp_path: Path) -> None:
    config = tmp_path / "smeg.toml"
    config.write_text(
        '[providers.a]\ntype = "http"\nurl = "http://127.0.0.1:9/a"\n[routes.sms]\nweights = { zz = 1 }\n'
    )
    env = smeg_env(SMEG_DATABASE_URL=f"sqlite:///{tmp_path}/smeg.db", SMEG_CONFIG=str(config))
    for command in ("check", "run"):
        refused = run_cli(env, command)
        assert (refused.returncode, refused.stderr.strip()) == (
            2,
            "smeg: route sms: 'zz' is not a configured provider",
        ), command
    assert not (tmp_path / "smeg.db").exists()
