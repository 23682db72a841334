"""``smeg audit replay``, ``smeg projections …`` and ``smeg report`` as subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import run_cli, smeg_env
from tests.e2e.test_cli import at, opened, seed_delivered_after_one_backoff, seed_failed
from tests.unit.test_report import LINE_KEYS, TOP_KEYS


def seeded(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path}/smeg.db"
    with opened(url) as store:
        seed_delivered_after_one_backoff(store, "ok-1")
        seed_failed(store, "bad-1", permanent=True)
    return smeg_env(SMEG_DATABASE_URL=url)


def test_audit_replay_shows_the_state_as_it_was_at_a_moment(tmp_path: Path) -> None:
    env = seeded(tmp_path)
    # Between the BackedOff (t=2 s) and the second attempt (t=62 s)
    result = run_cli(env, "audit", "replay", "ok-1", "--at", at(30).isoformat(), "--json")
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state["status"] == "backed_off"
    assert state["version"] == 3 and state["last_event"] == "BackedOff"
    assert state["retry_at"] == at(62).isoformat()
    later = json.loads(run_cli(env, "audit", "replay", "ok-1", "--at", at(100).isoformat(), "--json").stdout)
    assert later["status"] == "delivered" and later["attempts"] == 2
    human = run_cli(env, "audit", "replay", "ok-1", "--at", at(30).isoformat())
    assert "+447700900123" not in human.stdout and "backed_off" in human.stdout


def test_audit_replay_before_the_message_existed_is_a_one_line_refusal(tmp_path: Path) -> None:
    env = seeded(tmp_path)
    result = run_cli(env, "audit", "replay", "ok-1", "--at", at(-60).isoformat())
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "did not exist yet" in result.stderr
    bad = run_cli(env, "audit", "replay", "ok-1", "--at", "noon")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_projections_rebuild_and_status_report_positions_without_lag(tmp_path: Path) -> None:
    env = seeded(tmp_path)
    rebuilt = run_cli(env, "projections", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt message_status: 8 events" in rebuilt.stdout
    assert "rebuilt delivery_stats_hourly: 8 events" in rebuilt.stdout
    assert "rebuilt delivery_stats_minutely: 8 events" in rebuilt.stdout
    status = run_cli(env, "projections", "status")
    lines = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:]}
    assert lines["message_status"][1:4] == ["8", "8", "0"]
    assert lines["events_exchange"][3] == "8"  # nothing published without a running smeg
    unknown = run_cli(env, "projections", "rebuild", "nope")
    assert unknown.returncode == 2 and "known: message_status" in unknown.stderr


def test_projections_rebuild_in_several_processes(tmp_path: Path) -> None:
    env = seeded(tmp_path)
    rebuilt = run_cli(env, "projections", "rebuild", "--workers", "2")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt failures_by_reason: 8 events" in rebuilt.stdout
    report = json.loads(run_cli(env, "report", "--since", at(-3600).isoformat(), "--format", "json").stdout)
    assert '"delivered": 1' in json.dumps(report)
    refused = run_cli(env, "projections", "rebuild", "--workers", "0")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr


def test_report_totals_formats_and_chart(tmp_path: Path) -> None:
    env = seeded(tmp_path)
    window = ["--since", at(-3600).isoformat(), "--until", at(7200).isoformat()]
    report = run_cli(env, "report", *window, "--format", "json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    text = json.dumps(data)
    assert '"delivered": 1' in text and '"received": 2' in text
    assert set(data) >= {*TOP_KEYS, "window", "top_reasons_days"}
    assert all(set(line) >= {*LINE_KEYS, "messages"} for line in [*data["lines"], data["total"]])
    assert data["window"]["bin"] == "minute" and not data["window"]["rounded"]
    [line] = data["lines"]  # both messages went to prov-a: no '(none)' line for what was received
    assert (line["provider"], line["received"], line["attempts"], line["failed_permanent"]) == (
        "prov-a",
        2,
        3,
        1,
    )
    assert line["messages"] == {
        "received": 2,
        "delivered_first_try": 0,
        "delivered_after_retry": 1,
        "failed_permanent": 1,
        "failed_exhausted": 0,
        "pending": 0,
    }
    csv = run_cli(env, "report", *window, "--format", "csv")
    assert csv.stdout.splitlines()[0].startswith("provider,channel,received,attempts,delivered")
    chart = tmp_path / "r.png"
    drawn = run_cli(env, "report", *window, "--chart", str(chart))
    assert drawn.returncode == 0, drawn.stderr
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(chart.read_bytes()) > 20_000
    assert f"chart written to {chart}" in drawn.stderr
    assert "Columns:" in drawn.stdout


def test_report_inside_an_hour_covers_that_window_to_the_minute_and_explains_its_columns(
    tmp_path: Path,
) -> None:
    env = seeded(tmp_path)

    # 10:01:00 – 10:01:30: ok-1's second attempt (10:01:02) and its delivery (10:01:03), nothing else
    result = run_cli(env, "report", "--since", at(60).isoformat(), "--until", at(90).isoformat())

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == (
        "Window: 2026-01-01 10:01 – 10:02 UTC, in one-minute bins"
        " (asked for 10:01:00 – 10:01:30: rounded out to whole minutes)"
    )
    events = lines.index("What happened in the window (events, whenever their message was received):")
    assert lines[events + 2].split()[:6] == ["prov-a", "sms", "1", "0", "1", "0"]
    assert lines[events + 3].split()[:6] == ["all", "all", "1", "0", "1", "0"]
    legend = "\n".join(lines[lines.index("Columns:") :])
    for column in ("received", "after retry", "refused", "gave up", "pending", "retried %", "p50, p95"):
        assert f"\n  {column} " in legend
