"""Delivery reports: quantiles from the histogram, windows and bins, the numbers, the three
formats (legend, stable JSON keys), the chart."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from adapters.sql import make_engine, metadata
from adapters.stats_queries import HOUR, MINUTE, window
from adapters.stats_view import (
    COUNTER_COLUMNS,
    HISTOGRAM_COLUMNS,
    OUTCOME_COLUMNS,
    REASON_COUNTERS,
    delivery_stats_hourly,
    delivery_stats_minutely,
    failures_by_reason,
)
from smeg_actors.cli.report import (
    ChartUnavailableError,
    Line,
    Outcomes,
    build_report,
    draw_chart,
    histogram_quantile,
    render,
)
from smeg_actors.cli.report_chart import chart
from smeg_actors.cli.report_data import report_bins

UTC = timezone.utc
EMPTY = [0] * len(HISTOGRAM_COLUMNS)

#: The keys ``smeg report --format json`` had before messages by outcome: they must stay.
TOP_KEYS = {"since", "until", "provider", "lines", "total", "top_reasons"}
LINE_KEYS = {
    "provider",
    "channel",
    "received",
    "attempts",
    "delivered",
    "delivered_retried",
    "backed_off",
    "failed_permanent",
    "failed_exhausted",
    "latency_sum_ms",
    "latency_count",
    "histogram",
    "failed",
    "delivery_rate",
    "retry_rate",
    "backoff_rate",
    "mean_latency_ms",
    "p50_ms",
    "p95_ms",
}
CSV_HEADER = (
    "provider,channel,received,attempts,delivered,delivered_retried,backed_off,failed_permanent,"
    "failed_exhausted,failed,latency_count,mean_latency_ms,delivery_rate,retry_rate,backoff_rate,"
    "p50_ms,p95_ms,top_reasons"
)


def histogram(**buckets: int) -> list[int]:
    return [buckets.get(name, 0) for name in HISTOGRAM_COLUMNS]


# --- quantiles ------------------------------------------------------------------------------


def test_empty_histogram_has_no_quantile() -> None:
    assert histogram_quantile(EMPTY, 0.5) is None


def test_quantile_is_the_upper_bound_of_its_bucket() -> None:
    counts = histogram(lat_le_100ms=50, lat_le_250ms=45, lat_le_500ms=4, lat_le_5s=1)
    assert histogram_quantile(counts, 0.5) == 100
    assert histogram_quantile(counts, 0.51) == 250
    assert histogram_quantile(counts, 0.95) == 250
    assert histogram_quantile(counts, 0.96) == 500
    assert histogram_quantile(counts, 0.995) == 5_000
    assert histogram_quantile(counts, 1.0) == 5_000


def test_rank_is_not_pushed_up_by_float_error() -> None:
    # 0.95 × 20 is 19.000000000000004 in floating point: the 19th latency is still ≤ 100 ms
    assert histogram_quantile(histogram(lat_le_100ms=19, lat_gt_3600s=1), 0.95) == 100


def test_a_quantile_in_the_overflow_bucket_is_infinite() -> None:
    assert histogram_quantile(histogram(lat_le_1s=1, lat_gt_3600s=3), 0.5) == math.inf


@pytest.mark.parametrize("q", [0, -0.1, 1.5])
def test_quantile_outside_0_1_is_refused(q: float) -> None:
    with pytest.raises(ValueError):
        histogram_quantile(histogram(lat_le_1s=1), q)


def test_histogram_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError):
        histogram_quantile([1, 2, 3], 0.5)


def test_line_rates_and_empty_line() -> None:
    line = Line("alpha", "sms", attempts=10, delivered=6, delivered_retried=3, backed_off=4)
    line.failed_permanent, line.failed_exhausted = 1, 1
    assert (line.failed, line.delivery_rate, line.retry_rate, line.backoff_rate) == (2, 0.75, 0.5, 0.4)
    empty = Line("alpha", "sms")
    assert empty.delivery_rate is empty.retry_rate is empty.mean_latency_ms is empty.p95_ms is None
    assert empty.empty and not line.empty


def test_outcomes_add_up_to_the_messages_received() -> None:
    outcomes = Outcomes(delivered_first_try=5, delivered_after_retry=2, failed_permanent=1, pending=3)
    assert (outcomes.received, outcomes.delivered, outcomes.failed) == (11, 7, 1)


# --- windows and bins -----------------------------------------------------------------------


def at(h: int, m: int = 0, s: int = 0) -> datetime:
    return datetime(2024, 6, 1, h, m, s, tzinfo=UTC)


def test_a_window_inside_an_hour_is_read_per_minute_rounded_out_to_whole_minutes() -> None:
    span = window(at(10, 5, 30), at(10, 34, 10))

    assert span.bin == MINUTE and span.bin_name == "minute"
    assert (span.since, span.until) == (at(10, 5), at(10, 35))
    assert span.rounded
    assert span.starts()[0] == at(10, 5) and span.starts()[-1] == at(10, 34) and len(span.starts()) == 30


def test_a_window_on_bin_boundaries_is_not_rounded() -> None:
    span = window(at(10, 5), at(10, 35))

    assert (span.since, span.until, span.rounded) == (at(10, 5), at(10, 35), False)


@pytest.mark.parametrize(
    ("length", "size"),
    [
        (timedelta(seconds=10), MINUTE),
        (timedelta(hours=6), MINUTE),
        (timedelta(hours=6, seconds=1), HOUR),
        (timedelta(days=1), HOUR),
    ],
)
def test_minutes_up_to_six_hours_then_hours(length: timedelta, size: timedelta) -> None:
    assert window(at(8), at(8) + length).bin == size


def test_a_long_window_is_rounded_out_to_whole_hours_and_naive_times_are_utc() -> None:
    span = window(datetime(2024, 6, 1, 1, 30), datetime(2024, 6, 2, 1, 30))

    assert (span.since, span.until, span.bin, span.rounded) == (
        at(1),
        datetime(2024, 6, 2, 2, tzinfo=UTC),
        HOUR,
        True,
    )


def test_a_bin_may_be_forced_but_only_to_a_minute_or_an_hour() -> None:
    assert window(at(8), at(20), MINUTE).bin == MINUTE
    with pytest.raises(ValueError):
        window(at(8), at(9), timedelta(seconds=10))


# --- reports from the tables ----------------------------------------------------------------


def hour(h: int) -> datetime:
    return at(h)


def counters(key: dict[str, Any], **values: int) -> dict[str, Any]:
    columns = (*COUNTER_COLUMNS, "latency_sum_ms", "latency_count", *HISTOGRAM_COLUMNS)
    return key | dict.fromkeys(columns, 0) | values


def hourly(when: datetime, provider: str, channel: str, **values: int) -> dict[str, Any]:
    return counters({"hour": when, "provider": provider, "channel": channel}, **values)


def minutely(when: datetime, provider: str, channel: str, **values: int) -> dict[str, Any]:
    key = {"minute": when, "provider": provider, "channel": channel} | dict.fromkeys(OUTCOME_COLUMNS, 0)
    return counters(key, **values)


def reason(day: date, provider: str, name: str, **values: int) -> dict[str, Any]:
    zeros = dict.fromkeys(REASON_COUNTERS, 0)
    return {"day": day, "provider": provider, "reason": name} | zeros | values


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A SQLite file holding a few hand-made rows of the three tables."""
    engine = make_engine(f"sqlite:///{tmp_path}/report.db")
    metadata.create_all(engine)
    rows = [
        hourly(hour(9), "alpha", "sms", received=100, delivered=100),  # before the window
        hourly(hour(10), "", "sms", received=8),
        hourly(hour(10), "alpha", "sms", received=2, attempts=12, delivered=8, delivered_retried=2)
        | {"backed_off": 4, "failed_permanent": 1, "failed_exhausted": 1}
        | {"latency_sum_ms": 4_000, "latency_count": 8, "lat_le_250ms": 5, "lat_le_1s": 3},
        hourly(hour(11), "alpha", "sms", attempts=2, delivered=2, latency_sum_ms=7_300_000)
        | {"latency_count": 2, "lat_gt_3600s": 2},
        hourly(hour(11), "beta", "im", received=5, attempts=5, delivered=4, failed_permanent=1)
        | {"latency_sum_ms": 8_000, "latency_count": 4, "lat_le_2_5s": 4},
        hourly(hour(12), "beta", "im", received=50),  # at ``until``: excluded
    ]
    # Messages by the minute they were received, under the provider that handles them.
    minutes = [
        minutely(at(9, 59), "alpha", "sms", msg_delivered_first=100),  # before the window
        minutely(at(10, 5), "alpha", "sms", msg_delivered_first=6, msg_delivered_retried=2)
        | {"msg_failed_permanent": 1, "msg_failed_exhausted": 1},
        minutely(at(10, 31), "alpha", "sms", attempts=3, delivered=2, backed_off=1)
        | {"latency_sum_ms": 300, "latency_count": 2, "lat_le_250ms": 2},
        minutely(at(10, 40), "", "sms", received=3, msg_pending=3),  # not attempted yet
        minutely(at(10, 44), "", "im", msg_pending=0),  # a message moved on: a row of zeros
        minutely(at(11, 10), "beta", "im", msg_delivered_first=4, msg_failed_permanent=1),
        minutely(at(12, 0), "beta", "im", msg_pending=50),  # at ``until``: excluded
    ]
    reasons = [
        reason(date(2024, 6, 1), "alpha", "throttled", backed_off=4),
        reason(date(2024, 6, 1), "alpha", "invalid_recipient", failed=1, permanent=1),
        reason(date(2024, 6, 1), "alpha", "timeout", failed=1, exhausted=1),
        reason(date(2024, 6, 1), "beta", "invalid_recipient", failed=1, permanent=1),
        reason(date(2024, 5, 31), "beta", "blocked", failed=9, permanent=9),  # before the window
    ]
    with engine.begin() as connection:
        connection.execute(insert(delivery_stats_hourly), rows)
        connection.execute(insert(delivery_stats_minutely), minutes)
        connection.execute(insert(failures_by_reason), reasons)
    yield engine
    engine.dispose()


SINCE, UNTIL = at(10, 30), hour(12)


def test_report_sums_the_window_per_provider_and_channel(engine: Engine) -> None:
    report = build_report(engine, SINCE, UNTIL, None, bin=HOUR)

    assert [(line.provider, line.channel) for line in report.lines] == [
        ("alpha", "sms"),
        ("beta", "im"),
        ("", "sms"),  # messages no provider has had yet, last
    ]
    alpha = report.lines[0]
    assert (alpha.received, alpha.attempts, alpha.delivered, alpha.failed) == (10, 14, 10, 2)
    assert alpha.messages == Outcomes(6, 2, 1, 1, 0)
    assert alpha.delivery_rate == 10 / 12
    assert alpha.retry_rate == 2 / 10
    assert alpha.backoff_rate == 4 / 14
    assert alpha.mean_latency_ms == 7_304_000 / 10
    assert alpha.p50_ms == 250  # 5 of 10 latencies are ≤ 250 ms
    assert alpha.p95_ms == math.inf
    assert report.lines[2].messages == Outcomes(pending=3) and report.lines[2].attempts == 0
    total = report.total
    assert (total.received, total.delivered, total.failed_permanent, total.failed_exhausted) == (18, 14, 2, 1)
    assert total.messages == Outcomes(10, 2, 2, 1, 3)
    assert total.histogram == tuple(histogram(lat_le_250ms=5, lat_le_1s=3, lat_le_2_5s=4, lat_gt_3600s=2))
    assert [r.reason for r in report.reasons["*"]] == ["invalid_recipient", "timeout", "throttled"]
    assert report.reasons["*"][0].failed == report.reasons["*"][0].permanent == 2
    assert [r.reason for r in report.reasons["beta"]] == ["invalid_recipient"]
    assert report.window is not None and (report.window.since, report.window.until) == (hour(10), hour(12))


def test_a_short_window_reads_the_minute_rows_exactly(engine: Engine) -> None:
    report = build_report(engine, at(10, 30, 20), at(10, 45, 10))

    assert report.window is not None and report.window.bin == MINUTE
    assert [(line.provider, line.channel) for line in report.lines] == [("alpha", "sms"), ("", "sms")]
    alpha, waiting = report.lines
    assert (alpha.received, alpha.attempts, alpha.delivered, alpha.backed_off, alpha.p50_ms) == (
        0,
        3,
        2,
        1,
        250,
    )
    assert waiting.messages == Outcomes(pending=3) and waiting.received == 3
    assert report.total.received == 3 and report.total.attempts == 3


def test_the_consoles_failures_per_hour_come_from_the_report_queries(engine: Engine) -> None:
    from smeg_actors.admin.console_data import failures_by_hour

    hours, failures = failures_by_hour(engine, at(12, 30))

    # The 24 hours up to the current one; Failed events per provider in each, heat 0-4
    assert len(hours) == 24 and (hours[0], hours[-1]) == (datetime(2024, 5, 31, 13, tzinfo=UTC), at(12))
    assert set(failures) == {"alpha", "beta"}
    assert failures["alpha"][hours.index(at(10))] == (2, 4)  # one permanent, one exhausted
    assert failures["beta"][hours.index(at(11))] == (1, 2)
    assert sum(n for n, _ in failures["alpha"] + failures["beta"]) == 3


def test_report_for_one_provider_and_naive_datetimes_as_utc(engine: Engine) -> None:
    report = build_report(
        engine, SINCE.replace(tzinfo=None), UNTIL.replace(tzinfo=None), "beta", top=1, bin=HOUR
    )

    assert [(line.provider, line.channel) for line in report.lines] == [("beta", "im")]
    assert report.total.received == 5
    assert set(report.reasons) == {"beta", "*"}
    assert report.since == SINCE


def test_empty_window_gives_an_empty_report(engine: Engine) -> None:
    report = build_report(engine, datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 2, tzinfo=UTC))

    assert report.lines == []
    assert report.total.received == 0 and report.total.p50_ms is None
    assert report.reasons == {}
    for fmt in ("table", "json", "csv"):
        assert render(report, fmt)


# --- formats --------------------------------------------------------------------------------


def test_json_keeps_every_key_it_had_and_adds_messages_and_the_window(engine: Engine) -> None:
    data = json.loads(render(build_report(engine, SINCE, UNTIL, bin=HOUR), "json"))

    assert set(data) >= TOP_KEYS
    for line in [*data["lines"], data["total"]]:
        assert set(line) >= LINE_KEYS
        assert set(line["histogram"]) == set(HISTOGRAM_COLUMNS)
        assert set(line["messages"]) == {"received", *Outcomes().as_dict()}
    assert data["since"] == "2024-06-01T10:30:00+00:00"
    assert [line["provider"] for line in data["lines"]] == ["alpha", "beta", ""]
    assert data["lines"][0]["p95_ms"] == "inf"
    assert data["lines"][1]["p50_ms"] == 2_500
    assert data["total"]["received"] == 18
    assert data["total"]["messages"] == {
        "received": 18,
        "delivered_first_try": 10,
        "delivered_after_retry": 2,
        "failed_permanent": 2,
        "failed_exhausted": 1,
        "pending": 3,
    }
    assert data["total"]["histogram"]["lat_le_250ms"] == 5
    assert data["top_reasons"]["alpha"][0] == {
        "reason": "invalid_recipient",
        "failed": 1,
        "permanent": 1,
        "exhausted": 0,
        "backed_off": 0,
    }
    assert data["window"] == {
        "since": "2024-06-01T10:00:00+00:00",
        "until": "2024-06-01T12:00:00+00:00",
        "bin": "hour",
        "bin_seconds": 3600,
        "rounded": True,
        "asked_since": "2024-06-01T10:30:00+00:00",
        "asked_until": "2024-06-01T12:00:00+00:00",
    }
    assert data["top_reasons_days"] == {"first": "2024-06-01", "last": "2024-06-01"}


def test_csv_has_a_header_and_a_row_per_line_plus_the_total(engine: Engine) -> None:
    text = render(build_report(engine, SINCE, UNTIL, bin=HOUR), "csv")
    rows = list(csv.DictReader(io.StringIO(text)))

    assert text.splitlines()[0].startswith(CSV_HEADER + ",messages_received,")
    expected = [("alpha", "sms"), ("beta", "im"), ("", "sms"), ("*", "*")]
    assert [(r["provider"], r["channel"]) for r in rows] == expected
    assert rows[0]["p95_ms"] == "inf"
    assert rows[0]["top_reasons"] == "invalid_recipient:1:0;timeout:1:0;throttled:0:4"
    assert rows[3]["received"] == "18" and rows[3]["messages_pending"] == "3"


def test_table_has_both_tables_the_window_it_covered_and_a_legend_for_every_column(engine: Engine) -> None:
    text = render(build_report(engine, at(10, 30, 20), at(10, 45, 10)), "table")
    lines = text.splitlines()

    assert lines[0] == "Delivery report, provider: all"
    assert lines[1] == (
        "Window: 2024-06-01 10:30 – 10:46 UTC, in one-minute bins"
        " (asked for 10:30:20 – 10:45:10: rounded out to whole minutes)"
    )
    messages = lines.index("Messages received in the window, each counted once, by where it stands now:")
    header = "provider channel received delivered after retry refused gave up pending"
    assert lines[messages + 1].split() == header.split()
    assert lines[messages + 2].split() == ["(no", "provider", "yet)", "sms", "3", "0", "0", "0", "0", "3"]
    assert lines[messages + 3].split() == ["all", "all", "3", "0", "0", "0", "0", "3"]
    events = lines.index("What happened in the window (events, whenever their message was received):")
    header = "provider channel attempts backed off delivered failed delivered % retried % backoff % p50 p95"
    assert lines[events + 1].split() == header.split()
    assert lines[events + 2].split() == [
        "alpha",
        "sms",
        "3",
        "1",
        "2",
        "0",
        "100.0",
        "0.0",
        "33.3",
        "250ms",
        "250ms",
    ]
    legend = lines[lines.index("Columns:") + 1 :]
    named = {line[2:].split("  ")[0] for line in legend if line[2:3] != " "}
    shown = {"received", "delivered", "after retry", "refused", "gave up", "pending", "attempts"}
    shown |= {"backed off", "failed", "delivered %", "retried %", "backoff %", "p50, p95"}
    assert named == shown


def test_table_of_a_window_on_whole_hours_says_nothing_was_rounded(engine: Engine) -> None:
    text = render(build_report(engine, hour(10), hour(12), bin=HOUR), "table")

    assert text.splitlines()[1] == "Window: 2024-06-01 10:00 – 12:00 UTC, in one-hour bins"
    assert "  alpha     invalid_recipient       1           0" in text.splitlines()
    assert "Top failure reasons on 2024-06-01 (UTC; whole days: reasons are counted per day):" in text


def test_unknown_format_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="table, json, csv"):
        render(build_report(engine, SINCE, UNTIL), "xml")


# --- chart ----------------------------------------------------------------------------------


def test_chart_writes_a_png(engine: Engine, tmp_path: Path) -> None:
    path = draw_chart(engine, SINCE, UNTIL, None, tmp_path / "chart.png")

    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 5_000


def test_chart_stacks_messages_by_outcome_never_events(engine: Engine) -> None:
    span, bins = report_bins(engine, hour(10), hour(12), None)

    figure = chart(span, bins, None)

    messages = figure.axes[0]
    assert sum(bar.get_height() for bar in messages.patches) == 18  # each message once
    labels = [text.get_text() for text in messages.get_legend().get_texts()]
    assert labels == [
        "delivered, first try: 10",
        "delivered after a retry: 2",
        "failed: refused (permanent): 2",
        "failed: gave up (retries ran out): 1",
        "pending (not finished yet): 3",
    ]
    assert "18 messages received 2024-06-01 10:00 – 12:00 UTC" in messages.get_title()
    assert messages.get_xlim() == figure.axes[1].get_xlim()


def test_chart_of_an_empty_window_still_writes_a_png(engine: Engine, tmp_path: Path) -> None:
    path = draw_chart(engine, hour(20), hour(22), "gamma", str(tmp_path / "empty.png"))

    assert path.read_bytes().startswith(b"\x89PNG")


def test_chart_without_matplotlib_says_how_to_install_it(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)

    with pytest.raises(ChartUnavailableError, match=r"pip install 'smeg\[chart\]'") as info:
        draw_chart(engine, SINCE, UNTIL, None, tmp_path / "chart.png")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "chart.png").exists()
