"""Delivery reports: quantiles from the histogram, the numbers, the three formats, the chart."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Iterator
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from adapters.sql import make_engine, metadata
from adapters.stats_view import (
    COUNTER_COLUMNS,
    HISTOGRAM_COLUMNS,
    REASON_COUNTERS,
    delivery_stats_hourly,
    failures_by_reason,
)
from smeg_actors.cli.report import (
    ChartUnavailableError,
    Line,
    build_report,
    draw_chart,
    histogram_quantile,
    render,
)

UTC = timezone.utc
EMPTY = [0] * len(HISTOGRAM_COLUMNS)


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


# --- reports from the tables ----------------------------------------------------------------


def hour(h: int) -> datetime:
    return datetime(2024, 6, 1, h, tzinfo=UTC)


def hourly(at: datetime, provider: str, channel: str, **values: int) -> dict[str, Any]:
    row: dict[str, Any] = {"hour": at, "provider": provider, "channel": channel}
    row |= dict.fromkeys((*COUNTER_COLUMNS, "latency_sum_ms", "latency_count", *HISTOGRAM_COLUMNS), 0)
    return row | values


def reason(day: date, provider: str, name: str, **values: int) -> dict[str, Any]:
    zeros = dict.fromkeys(REASON_COUNTERS, 0)
    return {"day": day, "provider": provider, "reason": name} | zeros | values


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A SQLite file holding a few hand-made rows of both tables."""
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
    reasons = [
        reason(date(2024, 6, 1), "alpha", "throttled", backed_off=4),
        reason(date(2024, 6, 1), "alpha", "invalid_recipient", failed=1, permanent=1),
        reason(date(2024, 6, 1), "alpha", "timeout", failed=1, exhausted=1),
        reason(date(2024, 6, 1), "beta", "invalid_recipient", failed=1, permanent=1),
        reason(date(2024, 5, 31), "beta", "blocked", failed=9, permanent=9),  # before the window
    ]
    with engine.begin() as connection:
        connection.execute(insert(delivery_stats_hourly), rows)
        connection.execute(insert(failures_by_reason), reasons)
    yield engine
    engine.dispose()


SINCE, UNTIL = datetime(2024, 6, 1, 10, 30, tzinfo=UTC), hour(12)


def test_report_sums_the_window_per_provider_and_channel(engine: Engine) -> None:
    report = build_report(engine, SINCE, UNTIL, None)

    assert [(line.provider, line.channel) for line in report.lines] == [
        ("", "sms"),
        ("alpha", "sms"),
        ("beta", "im"),
    ]
    alpha = report.lines[1]
    assert (alpha.received, alpha.attempts, alpha.delivered, alpha.failed) == (2, 14, 10, 2)
    assert alpha.delivery_rate == 10 / 12
    assert alpha.retry_rate == 2 / 10
    assert alpha.backoff_rate == 4 / 14
    assert alpha.mean_latency_ms == 7_304_000 / 10
    assert alpha.p50_ms == 250  # 5 of 10 latencies are ≤ 250 ms
    assert alpha.p95_ms == math.inf
    total = report.total
    assert (total.received, total.delivered, total.failed_permanent, total.failed_exhausted) == (15, 14, 2, 1)
    assert total.histogram == tuple(histogram(lat_le_250ms=5, lat_le_1s=3, lat_le_2_5s=4, lat_gt_3600s=2))
    assert [r.reason for r in report.reasons["*"]] == ["invalid_recipient", "timeout", "throttled"]
    assert report.reasons["*"][0].failed == report.reasons["*"][0].permanent == 2
    assert [r.reason for r in report.reasons["beta"]] == ["invalid_recipient"]


def test_report_for_one_provider_and_naive_datetimes_as_utc(engine: Engine) -> None:
    report = build_report(engine, SINCE.replace(tzinfo=None), UNTIL.replace(tzinfo=None), "beta", top=1)

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


def test_json_parses_and_writes_an_overflow_quantile_as_inf(engine: Engine) -> None:
    data = json.loads(render(build_report(engine, SINCE, UNTIL), "json"))

    assert data["since"] == "2024-06-01T10:30:00+00:00"
    assert [line["provider"] for line in data["lines"]] == ["", "alpha", "beta"]
    assert data["lines"][1]["p95_ms"] == "inf"
    assert data["lines"][2]["p50_ms"] == 2_500
    assert data["total"]["received"] == 15
    assert data["total"]["histogram"]["lat_le_250ms"] == 5
    assert data["top_reasons"]["alpha"][0] == {
        "reason": "invalid_recipient",
        "failed": 1,
        "permanent": 1,
        "exhausted": 0,
        "backed_off": 0,
    }


def test_csv_has_a_header_and_a_row_per_line_plus_the_total(engine: Engine) -> None:
    text = render(build_report(engine, SINCE, UNTIL), "csv")
    rows = list(csv.DictReader(io.StringIO(text)))

    assert text.splitlines()[0].startswith("provider,channel,received,attempts,delivered")
    expected = [("", "sms"), ("alpha", "sms"), ("beta", "im"), ("*", "*")]
    assert [(r["provider"], r["channel"]) for r in rows] == expected
    assert rows[1]["p95_ms"] == "inf"
    assert rows[1]["top_reasons"] == "invalid_recipient:1:0;timeout:1:0;throttled:0:4"
    assert rows[3]["received"] == "15"


def test_table_is_aligned_text_with_a_total(engine: Engine) -> None:
    text = render(build_report(engine, SINCE, UNTIL), "table")

    lines = text.splitlines()
    assert lines[0] == "Deliveries 2024-06-01 10:30 – 2024-06-01 12:00 UTC, provider: all"
    header = "provider channel received attempts delivered failed p/e deliv% retry% backoff% p50 p95"
    assert lines[1].split() == header.split()
    assert lines[3].split() == [
        "alpha",
        "sms",
        "2",
        "14",
        "10",
        "1/1",
        "83.3",
        "20.0",
        "28.6",
        "250ms",
        ">1h",
    ]
    assert lines[5].split()[:3] == ["all", "all", "15"]
    assert "  alpha: invalid_recipient 1/0, timeout 1/0, throttled 0/4" in lines


def test_unknown_format_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="table, json, csv"):
        render(build_report(engine, SINCE, UNTIL), "xml")


# --- chart ----------------------------------------------------------------------------------


def test_chart_writes_a_png(engine: Engine, tmp_path: Path) -> None:
    path = draw_chart(engine, SINCE, UNTIL, None, tmp_path / "chart.png")

    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 5_000


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
