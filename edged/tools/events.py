"""`edged events`: the event history read back as lines, JSON Lines, CSV, a summary or a plot.

Times a user types are local (``2026-11-22``, ``2026-11-22 07:00``) or ago from now (``90m``,
``24h``, ``7d``); times shown are local too. Nothing here prints: edged.cli does.
"""

from __future__ import annotations

import csv
import importlib
import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from edged.api.history import COLUMNS, NS, EventRecord, SummaryRow, last_seen_ns
from edged.errors import UsageError

_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
PLOT_EXTRA = "pip install 'edged[plot]'"


class MissingExtra(UsageError):
    """An optional dependency a flag needs is not installed; the message names the extra."""


def parse_when(text: str, now_ns: int, what: str = "--since") -> int:
    """``24h``/``90m``/``7d``/``30s``/``2w`` ago, or an ISO local date or date-time, as Unix ns."""
    m = _AGO.fullmatch(text.strip())
    if m:
        return now_ns - int(float(m.group(1)) * _UNIT_S[m.group(2)] * NS)
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{what}: expected a duration ago (90m, 24h, 7d) or a date "
                         f"(2026-11-22, 2026-11-22T07:00), got {text[:40]!r}") from None
    return int(t.timestamp() * NS)  # naive: local time


def local(ts_ns: int, seconds: bool = True) -> str:
    return datetime.fromtimestamp(ts_ns / NS).strftime(
        "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def duration(seconds: float) -> str:
    """``14m05s``, ``2h03m``, ``4.2s``: short and sortable by eye."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def event_line(e: EventRecord) -> str:
    """One event for a human: local start, duration, camera, label, zones, score, end."""
    end = e["end_reason"] or "open"
    seconds = (last_seen_ns(e) - int(e["start_ts_ns"])) / NS
    zones = ",".join(e["zones_entered"] or ()) or "-"
    still = " stationary" if e["stationary"] else ""
    return (f"{local(int(e['start_ts_ns']))}  {duration(seconds):>7}  {e['camera']}  "
            f"{e['label']}  {zones}  {float(e['top_score']):.2f}  {end}{still}")


def summary_lines(rows: Sequence[SummaryRow]) -> list[str]:
    head = f"{'bucket':<17} {'camera':<12} {'label':<12} {'visits':>6} {'dwell':>8}"
    return [head] + [f"{r.bucket:<17} {r.camera:<12} {r.label:<12} {r.visits:>6} "
                     f"{duration(r.dwell_s):>8}" for r in rows]


def write_json(records: Iterable[dict[str, Any]], out: IO[str]) -> None:
    """JSON Lines: one object per event (or summary row), as `edged detect --json` does."""
    for r in records:
        out.write(json.dumps(r, separators=(",", ":")) + "\n")


def _cell(v: Any) -> Any:
    if isinstance(v, list):
        return json.dumps(v, separators=(",", ":"))
    return "" if v is None else v


def write_csv(records: Sequence[EventRecord], out: IO[str]) -> None:
    """The columns of the history plus readable local start/end times; lists as JSON text."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["start_local", "end_local", *(c.name for c in COLUMNS)])
    for r in records:
        end = r["end_ts_ns"]
        w.writerow([local(int(r["start_ts_ns"])), "" if end is None else local(int(end)),
                    *(_cell(r[c.name]) for c in COLUMNS)])


def write_summary_csv(rows: Sequence[SummaryRow], out: IO[str]) -> None:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(SummaryRow._fields)
    w.writerows(rows)


def _timeline(buckets: Sequence[str]) -> list[str]:
    """Every bucket from the first day's start to the last day's end (hours: 00:00-23:00 of
    each day; days: each day), so a quiet hour is a visible gap, not a missing bar."""
    if not buckets:
        return []
    hourly = len(buckets[0]) > 10
    first = datetime.strptime(buckets[0][:10], "%Y-%m-%d")
    last = datetime.strptime(buckets[-1][:10], "%Y-%m-%d") + timedelta(days=1)
    step = timedelta(hours=1) if hourly else timedelta(days=1)
    out, t = [], first
    while t < last:
        out.append(t.strftime("%Y-%m-%d %H:00" if hourly else "%Y-%m-%d"))
        t += step
    return out


def plot_visits(rows: Sequence[SummaryRow], path: Path, what: str) -> None:
    """Visits (bars) and minutes present (line) per bucket, all cameras and labels summed, to a
    PNG; ``what``: the filters, for the title. matplotlib is an optional extra, imported only
    here."""
    try:
        mpl = importlib.import_module("matplotlib")
        mpl.use("Agg")  # no display on a board
        plt = importlib.import_module("matplotlib.pyplot")
        ticker = importlib.import_module("matplotlib.ticker")
    except ImportError:
        raise MissingExtra(f"--plot needs matplotlib: {PLOT_EXTRA}") from None
    buckets = _timeline(sorted({r.bucket for r in rows}))
    hourly = bool(buckets) and len(buckets[0]) > 10
    visits = [sum(r.visits for r in rows if r.bucket == b) for b in buckets]
    dwell_min = [sum(r.dwell_s for r in rows if r.bucket == b) / 60 for b in buckets]
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.3 * len(buckets) + 2), 30), 4), dpi=100)
    try:
        x = list(range(len(buckets)))
        bars = ax.bar(x, visits, color="tab:blue", label="visits (began in it)")
        ax.set_ylabel("visits")
        ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        # at most ~48 labels; hourly, a divisor or multiple of 24, so that each day's 00 (with
        # the date) is labelled
        every = max(1, -(-len(buckets) // 48))
        if hourly:
            every = next((d for d in (1, 2, 3, 4, 6, 12) if d >= every), 24 * -(-every // 24))
        ax.set_xticks(x[::every])
        # hours: "HH" and the date at each midnight; days: the date
        ax.set_xticklabels([(b[11:13] if b[11:13] != "00" else f"{b[5:10]}\n00") if hourly
                            else b for b in buckets[::every]],
                           rotation=0 if hourly else 90, fontsize=8)
        ax.set_xlim(-0.6, len(buckets) - 0.4)
        ax2 = ax.twinx()
        line = ax2.plot(x, dwell_min, color="tab:orange", marker=".",
                        label="minutes present")
        ax2.set_ylabel("minutes present")
        ax2.set_ylim(bottom=0)
        ax.legend([bars, *line], [bars.get_label(), line[0].get_label()], loc="upper left",
                  fontsize=8)
        span = f"{buckets[0][:10]} to {buckets[-1][:10]}" if buckets else "no events"
        if buckets and buckets[0][:10] == buckets[-1][:10]:
            span = buckets[0][:10]
        ax.set_title(f"{what}: {sum(visits)} visits, {span}")
        fig.tight_layout()
        try:
            fig.savefig(path, format="png")
        except OSError as e:
            raise UsageError(f"--plot: cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
