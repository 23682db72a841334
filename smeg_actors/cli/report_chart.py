"""The report's chart (``smeg report --chart``, ``smeg demo``): a PNG drawn with matplotlib (the
optional ``chart`` extra), imported only when a chart is drawn.

Top: the messages received in each bin, each counted once, stacked by where it stands now
(delivered on the first try, delivered after a retry, refused, gave up, pending) — never events.
Bottom: p50 / p95 received → delivered of the deliveries made in each bin. Bins as the report's
(``adapters.stats_queries.window``): minutes for a window of up to 6 h, else hours.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from adapters.stats_queries import Window
from adapters.stats_view import LATENCY_BUCKETS
from smeg_actors.cli.report_data import Bin, histogram_quantile, report_bins

#: Each outcome's label and colour, bottom to top.
STACK = (
    ("delivered_first_try", "delivered, first try", "#2ca02c"),
    ("delivered_after_retry", "delivered after a retry", "#98df8a"),
    ("failed_permanent", "failed: refused (permanent)", "#d62728"),
    ("failed_exhausted", "failed: gave up (retries ran out)", "#9467bd"),
    ("pending", "pending (not finished yet)", "#b0b0b0"),
)
#: The parts of the bars are labelled with their counts when there are at most this many bars.
LABELLED_BARS = 40


class ChartUnavailableError(RuntimeError):
    """matplotlib is not installed (the optional ``chart`` extra)."""


def draw_chart(
    engine: Engine, since: datetime, until: datetime, provider: str | None, path: str | Path
) -> Path:
    """Write a PNG of the window: messages received per bin by outcome, and p50 / p95 latency.

    Raises:
        ChartUnavailableError: matplotlib is not installed.
    """
    span, bins = report_bins(engine, since, until, provider)
    chart(span, bins, provider).savefig(path, format="png", dpi=100)
    return Path(path)


def chart(span: Window, bins: list[Bin], provider: str | None) -> Any:
    """The chart's matplotlib ``Figure`` (messages above, latency below).

    Raises:
        ChartUnavailableError: matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ChartUnavailableError("matplotlib is not installed: pip install 'smeg[chart]'") from None
    figure = Figure(figsize=(11, 7), layout="constrained")
    FigureCanvasAgg(figure)
    counts, latency = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    _messages(counts, span, bins, provider)
    _latency(latency, span, bins)
    latency.set_xlim(span.since, span.until)
    return figure


def _messages(axes: Any, span: Window, bins: list[Bin], provider: str | None) -> None:
    starts, width = [b.start for b in bins], span.bin * 0.9
    bottom = [0] * len(bins)
    tallest = max((b.messages.received for b in bins), default=0)
    for name, label, colour in STACK:
        heights = [getattr(b.messages, name) for b in bins]
        bars = axes.bar(
            starts,
            heights,
            width,
            bottom=bottom,
            align="edge",
            color=colour,
            label=f"{label}: {sum(heights)}",
        )
        if len(bins) <= LABELLED_BARS:  # few bars: each part says how many it is
            shown = [str(h) if h and h >= tallest / 25 else "" for h in heights]
            axes.bar_label(bars, labels=shown, label_type="center", fontsize=8)
        bottom = [a + b for a, b in zip(bottom, heights, strict=True)]
    received = sum(bottom)
    axes.set_title(
        f"smeg: {received} messages received {_span(span)} UTC, provider: {provider or 'all'}\n"
        f"each counted once, in the {span.bin_name} it was received, by where it stands now"
    )
    axes.set_ylabel(f"messages received per {span.bin_name}")
    axes.set_ylim(0, max(1, tallest) * 1.08)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)
    if not received:
        axes.text(0.5, 0.5, "no messages received in this window", transform=axes.transAxes, ha="center")


def _latency(axes: Any, span: Window, bins: list[Bin]) -> None:
    middles = [b.start + span.bin / 2 for b in bins]
    overflow = LATENCY_BUCKETS[-2][1] / 1000
    for name, quantile, marker in (("p50", 0.5, "o"), ("p95", 0.95, "s")):
        values = [histogram_quantile(b.events.histogram, quantile) for b in bins]
        axes.plot(middles, [_seconds(v) for v in values], marker=marker, markersize=4, label=name, alpha=0.8)
        over = [(m, overflow) for m, v in zip(middles, values, strict=True) if v == math.inf]
        if over:
            axes.scatter(*zip(*over, strict=True), marker="^", color="black", zorder=3)
    if any(b.events.latency_count for b in bins):
        axes.set_yscale("log")
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), title="▲ = over 1 h", fontsize=9)
    axes.set_ylabel("received → delivered, s\n(bucket upper bound)")
    axes.set_xlabel(f"UTC, one bar per {span.bin_name}; latency of the deliveries made in it")


def _span(span: Window) -> str:
    start, end = span.since, span.until
    if start.date() == (end - timedelta(microseconds=1)).date():
        return f"{start:%Y-%m-%d %H:%M} – {end:%H:%M}"
    return f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M}"


def _seconds(ms: float | None) -> float:
    return math.nan if ms is None or math.isinf(ms) else ms / 1000
