"""The demo's report: KPIs read back from the metrics service, as a terminal table, a
self-contained HTML page (inline SVG charts) and a JSON summary.

Everything measured comes from the metrics service's public API — `GetKpis` (whole run, and
grouped by channel, team and queue), `ExportInteractions` (the per-interaction fact table),
`GetStaffing` (Erlang C on a forecast built from what was observed), `GetContactReasons` and
`GetLiveState`. Two things are converted, and the report says so:

- Simulated time: the services stamp events with the real clock and the day ran `speed` times
  faster, so durations are shown multiplied by `speed` (simulated seconds); counts and ratios
  need no conversion.
- Service level: the service's thresholds are whole real seconds, far coarser than 20
  simulated seconds at a high speed, so the service level (and the charts by interval of the
  simulated day) are computed here from the service's interaction export, with the same rule
  as the service's default policy (answered within T / (answered + abandoned)).
"""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from crm.v1 import metrics_pb2
from crmcore.cli.demo import charts
from crmcore.cli.demo.ledger import Ledger
from crmcore.cli.demo.scenario import (
    CHANNEL_MIX,
    SERVICE_LEVEL_TARGET,
    SERVICE_LEVEL_THRESHOLD_S,
    Scenario,
)

#: Share of paid time not on contacts assumed by the staffing recommendation.
SHRINKAGE = 0.30
VOICE = ("phone", "video")


@dataclass(frozen=True)
class RunInfo:
    """How the day was played."""

    seed: int
    speed: float
    window: str
    real_start: datetime
    real_end: datetime
    started_stack: bool
    endpoints: Mapping[str, str]
    data_dir: str


@dataclass(frozen=True)
class KpiLine:
    """One line of the KPI table: `value` as the service reports it (rates as fractions,
    durations in real seconds), `shown` converted for people (simulated seconds, percent)."""

    section: str
    key: str
    label: str
    value: float | None
    shown: str
    note: str


@dataclass
class ExportRow:
    """The export's columns the report uses, with times on the simulated day."""

    interaction_id: str
    channel: str
    bot: bool
    case_id: str
    contact_reason: str
    queue: str
    team: str
    status: str
    created_s: float
    queued_s: float | None
    wait_s: float | None
    abandoned: bool
    agents: int
    transfers: int
    reopens: int
    first_resolved: bool


@dataclass
class StaffingRow:
    label: str
    contacts: float
    handle_s: float
    erlangs: float
    agents: int
    scheduled: int
    service_level: float
    on_duty: int


@dataclass
class ReportData:
    run: RunInfo
    scenario: Scenario
    ledger: Ledger
    request: metrics_pb2.GetKpisRequest
    overall: metrics_pb2.Kpis
    by_channel: dict[str, metrics_pb2.Kpis]
    by_team: dict[str, metrics_pb2.Kpis]
    by_queue: dict[str, metrics_pb2.Kpis]
    reasons: metrics_pb2.ContactReasonReport
    live: metrics_pb2.LiveState
    rows: list[ExportRow]
    staffing: list[StaffingRow]
    staffing_note: str
    caught_up: bool
    #: Interactions of other runs in the period (the service counts whole quarter-hours).
    others: int = 0
    lines: list[KpiLine] = field(default_factory=list)


# --- asking the metrics service ---------------------------------------------------------------


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def kpi_request(
    start: datetime,
    end: datetime,
    speed: float,
    group_by: Sequence[metrics_pb2.Dimension.ValueType] = (),
) -> metrics_pb2.GetKpisRequest:
    """The run's KPIs: its real time range, SLA targets of 1 h (first response) and 8 h
    (resolution) of simulated time."""
    return metrics_pb2.GetKpisRequest(
        period=metrics_pb2.Period(
            range=metrics_pb2.TimeRange(start_time=timestamp(start), end_time=timestamp(end))
        ),
        group_by=list(group_by),
        policy=metrics_pb2.KpiPolicy(
            first_response_target_seconds=max(1, round(3600 / speed)),
            resolution_target_seconds=max(1, round(8 * 3600 / speed)),
        ),
    )


def value_of(rate: metrics_pb2.Rate) -> float | None:
    return rate.value if rate.HasField("value") else None


def mean_of(stats: metrics_pb2.DurationStats) -> float | None:
    return stats.mean_seconds if stats.HasField("mean_seconds") else None


def median_of(stats: metrics_pb2.DurationStats) -> float | None:
    return stats.median_seconds if stats.HasField("median_seconds") else None


def grouped(report: metrics_pb2.KpiReport) -> dict[str, metrics_pb2.Kpis]:
    return {row.group[0].value if row.group else "": row.kpis for row in report.rows}


def parse_export(
    text: str, interaction_ids: Iterable[str], simulated: Callable[[datetime], float], speed: float
) -> list[ExportRow]:
    """The export rows of this run's interactions, times mapped onto the simulated day."""
    wanted = set(interaction_ids)
    rows: list[ExportRow] = []
    for raw in csv.DictReader(io.StringIO(text)):
        if raw["interaction_id"] not in wanted:
            continue

        def moment(name: str, raw: dict[str, str] = raw) -> float | None:
            value = raw[name]
            return (
                simulated(datetime.fromisoformat(value.replace("Z", "+00:00"))) if value else None
            )

        created = moment("created_time")
        wait = raw["wait_seconds"]
        rows.append(
            ExportRow(
                interaction_id=raw["interaction_id"],
                channel=raw["channel"],
                bot=raw["bot"] == "true",
                case_id=raw["case_id"],
                contact_reason=raw["contact_reason"],
                queue=raw["queue"],
                team=raw["team"],
                status=raw["status"],
                created_s=created if created is not None else 0.0,
                queued_s=moment("queued_time"),
                wait_s=float(wait) * speed if wait else None,
                abandoned=bool(raw["abandoned_time"]),
                agents=int(raw["agents"] or 0),
                transfers=int(raw["transfers"] or 0),
                reopens=int(raw["reopens"] or 0),
                first_resolved=bool(raw["first_resolved_time"]),
            )
        )
    return rows


# --- figures computed from the export ------------------------------------------------------------


def service_level(rows: Iterable[ExportRow], threshold_s: float) -> tuple[int, int]:
    """(answered within `threshold_s` simulated seconds, answered + abandoned) of the queued
    contacts — the service's default policy (abandons count as missed)."""
    within = counted = 0
    for row in rows:
        if row.queued_s is None:
            continue
        if row.wait_s is not None:
            counted += 1
            within += row.wait_s <= threshold_s
        elif row.abandoned:
            counted += 1
    return within, counted


def interval_width(scenario: Scenario) -> float:
    return 1800.0 if scenario.length_s >= 4 * 3600 else 900.0


def interval_labels(scenario: Scenario) -> list[str]:
    width = interval_width(scenario)
    count = math.ceil(scenario.length_s / width)
    return [scenario.clock_label(i * width) for i in range(count)]


def _bucket(at_s: float, scenario: Scenario) -> int:
    count = math.ceil(scenario.length_s / interval_width(scenario))
    return min(max(int(at_s // interval_width(scenario)), 0), count - 1)


@dataclass
class IntervalFigures:
    labels: list[str]
    volume: dict[str, list[float]]
    service_level: list[float | None]
    asa_s: list[float | None]
    abandonment: list[float | None]
    fcr: list[float | None]
    csat: list[float | None]
    nps: list[float | None]


def interval_figures(data: ReportData) -> IntervalFigures:
    scenario = data.scenario
    labels = interval_labels(scenario)
    n = len(labels)
    volume: dict[str, list[float]] = {}
    for channel in CHANNEL_MIX:
        if any(row.channel == channel for row in data.rows):
            volume[channel] = [0.0] * n
    within, counted, waits, answered, abandoned, queued = ([0.0] * n for _ in range(6))
    fcr_ok, fcr_all = [0.0] * n, [0.0] * n
    later_in_case: Counter[str] = Counter(row.case_id for row in data.rows if row.case_id)
    for row in data.rows:
        index = _bucket(row.created_s, scenario)
        volume[row.channel][index] += 1
        if row.queued_s is not None:
            q = _bucket(row.queued_s, scenario)
            queued[q] += 1
            if row.wait_s is not None:
                counted[q] += 1
                answered[q] += 1
                waits[q] += row.wait_s
                within[q] += row.wait_s <= SERVICE_LEVEL_THRESHOLD_S
            elif row.abandoned:
                counted[q] += 1
                abandoned[q] += 1
        if row.first_resolved and row.agents > 0:
            fcr_all[index] += 1
            repeated = bool(row.case_id) and later_in_case[row.case_id] > 1
            fcr_ok[index] += (
                row.agents == 1 and not row.transfers and not row.reopens and not (repeated)
            )
    csat_ok, csat_all, promoters, detractors, nps_all = ([0.0] * n for _ in range(5))
    for survey in data.ledger.surveys:
        index = _bucket(survey.at_s, scenario)
        if survey.kind == "csat":
            csat_all[index] += 1
            csat_ok[index] += survey.score >= 4
        elif survey.kind == "nps":
            nps_all[index] += 1
            promoters[index] += survey.score >= 9
            detractors[index] += survey.score <= 6

    def ratio(
        top: Sequence[float], bottom: Sequence[float], scale: float = 1.0
    ) -> list[float | None]:
        return [t / b * scale if b else None for t, b in zip(top, bottom, strict=True)]

    return IntervalFigures(
        labels=labels,
        volume=volume,
        service_level=ratio(within, counted, 100),
        asa_s=ratio(waits, answered),
        abandonment=ratio(abandoned, queued, 100),
        fcr=ratio(fcr_ok, fcr_all, 100),
        csat=ratio(csat_ok, csat_all, 100),
        nps=[
            (p - d) / t * 100 if t else None
            for p, d, t in zip(promoters, detractors, nps_all, strict=True)
        ],
    )


def voice_arrivals(data: ReportData) -> list[float]:
    """Contacts per interval that reached a human on a voice channel (bot-free arrivals)."""
    counts = [0.0] * len(interval_labels(data.scenario))
    for row in data.rows:
        if row.channel in VOICE and row.queued_s is not None:
            counts[_bucket(row.created_s, data.scenario)] += 1
    return counts


# --- the KPI table ------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def kpi_lines(data: ReportData) -> list[KpiLine]:
    k, speed = data.overall, data.run.speed
    within, counted = service_level(data.rows, SERVICE_LEVEL_THRESHOLD_S)
    sl = within / counted if counted else None
    lines: list[KpiLine] = []

    def add(section: str, key: str, label: str, value: float | None, shown: str, note: str) -> None:
        lines.append(KpiLine(section, key, label, value, shown, note))

    def count(key: str, label: str, value: int, note: str) -> None:
        add("Volume", key, label, float(value), f"{value:,}", note)

    def rate(section: str, key: str, label: str, r: metrics_pb2.Rate, note: str = "") -> None:
        add(section, key, label, value_of(r), _percent(value_of(r)), note or r.policy)

    def duration(section: str, key: str, label: str, real: float | None, note: str) -> None:
        add(section, key, label, real, _seconds(real * speed if real is not None else None), note)

    count("created", "contacts", k.created, "interactions created, every channel")
    count("offered", "queued for an agent", k.offered, "contacts that waited in a queue")
    count("answered", "answered", k.answered, "first answers of queued contacts")
    count("abandoned", "abandoned", k.abandoned, "left the queue before an answer")
    count("handled", "handled", k.handled, "agent segments ended (a transfer = 2)")
    count("bot_conversations", "bot conversations", k.bot_conversations, "chatbot, self-service")
    add(
        "Service",
        "service_level",
        f"service level ({SERVICE_LEVEL_THRESHOLD_S} s)",
        sl,
        _percent(sl),
        f"{within}/{counted} answered within {SERVICE_LEVEL_THRESHOLD_S} s, abandons missed "
        "(from the export)",
    )
    rate("Service", "answer_rate", "answer rate", k.answer_rate)
    rate("Service", "abandonment_rate", "abandonment rate", k.abandonment_rate)
    duration("Service", "asa_seconds", "ASA", mean_of(k.answer_wait), "mean answer wait")
    duration(
        "Service",
        "first_response_median_seconds",
        "first response (median)",
        median_of(k.first_response),
        "first public agent reply − creation, bots excluded",
    )
    duration("Service", "aht_seconds", "AHT", mean_of(k.handle_time), "talk + hold + wrap-up")
    rate(
        "Quality",
        "fcr_provisional",
        "FCR (provisional)",
        k.fcr_provisional,
        "resolved with one agent contact, no reopen, no repeat contact on the reason yet "
        f"({int(k.fcr_provisional.denominator)} issues; the 7-day window is still open)",
    )
    rate("Quality", "resolution_rate", "resolution rate", k.resolution_rate)
    rate("Quality", "reopen_rate", "reopen rate", k.reopen_rate)
    rate("Quality", "transfer_rate", "transfer rate", k.transfer_rate)
    rate("Quality", "escalation_rate", "escalation rate", k.escalation_rate)
    rate("Quality", "repeat_contact_rate", "repeat contact rate", k.repeat_contact_rate)
    rate(
        "Quality",
        "bot_containment_provisional",
        "bot containment (provisional)",
        k.bot_containment_provisional,
        "bot conversations resolved without a human and no other contact (window still open)",
    )
    rate("Customer", "csat", "CSAT", k.csat)
    nps = value_of(k.nps)
    add(
        "Customer",
        "nps",
        "NPS",
        nps,
        "n/a" if nps is None else f"{nps * 100:+.0f}",
        f"% promoters − % detractors of {int(k.nps.denominator)} answers",
    )
    ces = value_of(k.ces)
    add(
        "Customer",
        "ces",
        "CES",
        ces,
        "n/a" if ces is None else f"{ces:.2f} / 7",
        f"mean of {int(k.ces.denominator)} effort answers (7 = very easy)",
    )
    rate("Workforce", "occupancy", "occupancy", k.occupancy, "time on contacts / (that + idle)")
    add(
        "Workforce",
        "logged_in_hours",
        "logged-in hours",
        k.logged_in_hours,
        f"{k.logged_in_hours * speed:,.1f} h",
        f"agent hours logged in (real hours × {speed:g})",
    )
    per_hour = value_of(k.handled_per_logged_in_hour)
    add(
        "Workforce",
        "handled_per_logged_in_hour",
        "handled per agent hour",
        per_hour,
        "n/a" if per_hour is None else f"{per_hour / speed:.1f}",
        f"handled / logged-in hour (per real hour ÷ {speed:g})",
    )
    return lines


def terminal_table(data: ReportData) -> str:
    """The KPI table for the terminal."""
    lines = data.lines
    label_w = max(len(line.label) for line in lines) + 2
    value_w = max(len(line.shown) for line in lines) + 2
    out: list[str] = []
    section = ""
    for line in lines:
        if line.section != section:
            section = line.section
            out.append(f"{section}")
        note = line.note if len(line.note) <= 70 else line.note[:69] + "…"
        out.append(f"  {line.label:<{label_w}}{line.shown:>{value_w}}   {note}")
    header = (
        f"KPIs of the simulated day {data.run.window} (seed {data.run.seed}, "
        f"{(data.run.real_end - data.run.real_start).total_seconds():.0f} s real at "
        f"speed {data.run.speed:g}), as the metrics service reports them; durations in "
        f"simulated time (real × {data.run.speed:g})"
    )
    rule = "─" * min(100, max(len(x) for x in out))
    return "\n".join([textwrap.fill(header, 100), rule, *out, rule])


def overlap_note(data: ReportData) -> str:
    return (
        f"The KPI table includes {data.others:,} interactions of other runs: the metrics "
        "service counts whole quarter-hours, and this data directory had other contacts in "
        "them. The charts by interval and the service level count this run's only."
    )


def summary(data: ReportData, report_path: Path | None) -> dict[str, Any]:
    """The JSON summary: what was asked, what the service answered, what the demo did."""
    return {
        "seed": data.run.seed,
        "speed": data.run.speed,
        "window": data.run.window,
        "real_start": data.run.real_start.isoformat(),
        "real_end": data.run.real_end.isoformat(),
        "started_stack": data.run.started_stack,
        "endpoints": dict(data.run.endpoints),
        "caught_up": data.caught_up,
        "other_interactions_in_period": data.others,
        "kpi_request": json_format.MessageToDict(data.request),
        "kpis": {line.key: line.value for line in data.lines},
        "shown": {line.key: line.shown for line in data.lines},
        "service_level": dict(
            zip(
                ("within", "counted"),
                service_level(data.rows, SERVICE_LEVEL_THRESHOLD_S),
                strict=True,
            )
        ),
        "demo": {
            "counts": dict(data.ledger.counts),
            "errors": dict(data.ledger.errors),
            "rpcs": data.ledger.rpcs,
            "interaction_ids": sorted(data.ledger.interactions),
        },
        "report": str(report_path) if report_path else None,
    }


def write_outputs(data: ReportData, html_path: Path) -> Path:
    """Writes the HTML report and the JSON summary beside it; returns the summary's path."""
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(render_html(data), encoding="utf-8")
    json_path = html_path.with_suffix(".json")
    json_path.write_text(
        json.dumps(summary(data, html_path), indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return json_path


# --- HTML -------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","Hiragino Sans","Noto Sans JP",sans-serif;
margin:0 auto;max-width:1100px;padding:24px;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
.sub{color:#666}.tiles{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.tile{border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:120px}
.tile b{display:block;font-size:1.5em}.tile span{color:#666;font-size:.85em}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}
td,th{border-bottom:1px solid #eee;padding:4px 10px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:18px}
.chart{width:100%;height:auto}figure{margin:0}figcaption{font-weight:600;margin:6px 0}
.note{background:#f6f8fa;border-left:4px solid #2f6fb3;padding:10px 14px;font-size:.92em}
.warn{border-left-color:#c44e52}
"""


def _figure(caption: str, svg: str, note: str = "") -> str:
    extra = f'<div class="sub">{escape(note)}</div>' if note else ""
    return f"<figure><figcaption>{escape(caption)}</figcaption>{svg}{extra}</figure>"


def _by(
    groups: Mapping[str, metrics_pb2.Kpis],
    pick: Callable[[metrics_pb2.Kpis], float | None],
    order: Iterable[str] | None = None,
) -> dict[str, float | None]:
    names = [name for name in (order or sorted(groups)) if name in groups and name]
    return {name: pick(groups[name]) for name in names}


def _pct(value: float) -> str:
    return f"{value:.0f} %"


def render_html(data: ReportData) -> str:
    run, scenario, speed = data.run, data.scenario, data.run.speed
    figures = interval_figures(data)
    real_s = (run.real_end - run.real_start).total_seconds()
    tiles = "".join(
        f'<div class="tile"><b>{escape(line.shown)}</b><span>{escape(line.label)}</span></div>'
        for line in data.lines
        if line.key
        in (
            "created",
            "service_level",
            "asa_seconds",
            "abandonment_rate",
            "fcr_provisional",
            "csat",
            "nps",
            "bot_containment_provisional",
        )
    )
    table = "".join(
        f"<tr><td>{escape(line.section)}</td><td>{escape(line.label)}</td>"
        f'<td class="n">{escape(line.shown)}</td><td>{escape(line.note)}</td></tr>'
        for line in data.lines
    )
    channel_order = [c for c in CHANNEL_MIX if c in data.by_channel]
    sl_by_channel: dict[str, float | None] = {}
    for channel in channel_order:
        within, counted = service_level(
            (row for row in data.rows if row.channel == channel), SERVICE_LEVEL_THRESHOLD_S
        )
        if counted:
            sl_by_channel[channel] = within / counted * 100
    by_interval = [
        _figure(
            "Contacts by interval and channel",
            charts.stacked_bars("contacts", figures.labels, figures.volume),
            "arrivals follow the scenario's daily curve (mid-morning and early-afternoon peaks)",
        ),
        _figure(
            f"Service level ({SERVICE_LEVEL_THRESHOLD_S} s) and abandonment by interval",
            charts.lines(
                "service level",
                figures.labels,
                {"service level %": figures.service_level, "abandoned %": figures.abandonment},
                _pct,
                top=100,
                target=SERVICE_LEVEL_TARGET * 100,
                target_label=f"target {SERVICE_LEVEL_TARGET:.0%}",
            ),
            "by the interval the contact was first queued; from the interaction export",
        ),
        _figure(
            "ASA by interval (simulated seconds)",
            charts.lines("ASA", figures.labels, {"ASA s": figures.asa_s}),
            f"mean wait of answered contacts; includes the system's own latency × {speed:g}",
        ),
        _figure(
            "FCR by interval",
            charts.lines("FCR", figures.labels, {"FCR %": figures.fcr}, _pct, top=100),
            "approximation from the export: resolved by one agent, no transfer, no reopen, no "
            "later contact in the same case (the service's FCR is in the table)",
        ),
        _figure(
            "CSAT and NPS by interval",
            charts.lines(
                "CSAT and NPS",
                figures.labels,
                {"CSAT %": figures.csat, "NPS": figures.nps},
                lambda v: f"{v:.0f}",
                top=100,
                bottom=-100,
            ),
            "from the answers the simulated customers gave, by the time they answered",
        ),
    ]
    by_group = [
        _figure(
            "Contacts by channel",
            charts.bars(
                "contacts by channel",
                _by(data.by_channel, lambda k: float(k.created), channel_order),
            ),
        ),
        _figure(
            f"Service level ({SERVICE_LEVEL_THRESHOLD_S} s) by channel",
            charts.bars("service level by channel", sl_by_channel, _pct, top=100, target=80),
            "channels whose contacts waited in a queue; e-mail waits count as long as calls",
        ),
        _figure(
            "ASA by channel (simulated seconds)",
            charts.bars(
                "ASA by channel",
                _by(
                    data.by_channel,
                    lambda k: (
                        (mean_of(k.answer_wait) or 0.0) * speed
                        if mean_of(k.answer_wait) is not None
                        else None
                    ),
                    channel_order,
                ),
            ),
        ),
        _figure(
            "FCR (provisional) by channel",
            charts.bars(
                "FCR by channel",
                _by(
                    data.by_channel, lambda k: _hundred(value_of(k.fcr_provisional)), channel_order
                ),
                _pct,
                top=100,
            ),
        ),
        _figure(
            "CSAT by channel",
            charts.bars(
                "CSAT by channel",
                _by(data.by_channel, lambda k: _hundred(value_of(k.csat)), channel_order),
                _pct,
                top=100,
            ),
        ),
        _figure(
            "FCR (provisional) and CSAT by team",
            charts.bars(
                "FCR and CSAT by team",
                {
                    **{
                        f"FCR {team}": _hundred(value_of(k.fcr_provisional))
                        for team, k in data.by_team.items()
                        if team
                    },
                    **{
                        f"CSAT {team}": _hundred(value_of(k.csat))
                        for team, k in data.by_team.items()
                        if team
                    },
                },
                _pct,
                top=100,
            ),
        ),
        _figure(
            "NPS by team",
            charts.bars(
                "NPS by team",
                {
                    team: _hundred(value_of(k.nps))
                    for team, k in data.by_team.items()
                    if team and value_of(k.nps) is not None
                },
                lambda v: f"{v:+.0f}",
                top=100,
            ),
            "bars start at 0: a negative NPS shows as an empty bar with its value",
        ),
        _figure(
            "AHT by team (simulated seconds)",
            charts.bars(
                "AHT by team",
                {
                    team: (mean_of(k.handle_time) or 0.0) * speed
                    for team, k in data.by_team.items()
                    if team and mean_of(k.handle_time) is not None
                },
            ),
        ),
        _figure(
            "Occupancy by team",
            charts.bars(
                "occupancy by team",
                {team: _hundred(value_of(k.occupancy)) for team, k in data.by_team.items() if team},
                _pct,
                top=100,
            ),
            "time on contacts / (time on contacts + available and idle)",
        ),
    ]
    staffing_rows = "".join(
        f"<tr><td>{escape(row.label)}</td><td class='n'>{row.contacts:.0f}</td>"
        f"<td class='n'>{row.handle_s:.0f} s</td><td class='n'>{row.erlangs:.2f}</td>"
        f"<td class='n'>{row.agents}</td><td class='n'>{row.scheduled}</td>"
        f"<td class='n'>{row.service_level * 100:.0f} %</td><td class='n'>{row.on_duty}</td></tr>"
        for row in data.staffing
    )
    staffing_chart = charts.lines(
        "staffing",
        [row.label for row in data.staffing],
        {
            "needed on calls (N)": [float(row.agents) for row in data.staffing],
            f"to schedule (N ÷ {1 - SHRINKAGE:.1f})": [
                float(row.scheduled) for row in data.staffing
            ],
            "on shift taking calls": [float(row.on_duty) for row in data.staffing],
        },
    )
    reasons = "".join(
        f"<tr><td>{escape(topic.name)}</td><td class='n'>{topic.count}</td>"
        f"<td class='n'>{topic.share * 100:.1f} %</td></tr>"
        for topic in data.reasons.top_contact_reasons
    )
    rising = "".join(
        f"<tr><td>{escape(topic.name)}</td><td>{_topic_kind(topic.kind)}</td>"
        f"<td class='n'>{topic.count}</td><td class='n'>{topic.previous_count}</td>"
        f"<td class='n'>{topic.rise_score:.1f}</td></tr>"
        for topic in data.reasons.rising
    )
    reason_chart = charts.bars(
        "top contact reasons",
        {topic.name: float(topic.count) for topic in data.reasons.top_contact_reasons},
    )
    counts = data.ledger.counts
    errors = sum(data.ledger.errors.values())
    did = "".join(
        f"<tr><td>{escape(name)}</td><td class='n'>{number}</td></tr>"
        for name, number in sorted(counts.items())
    )
    caught_up = (
        ""
        if data.caught_up
        else '<p class="note warn">The metrics service had not projected everything the demo '
        "did when the report was read: some figures may be short.</p>"
    )
    if data.others:
        caught_up += f'<p class="note warn">{escape(overlap_note(data))}</p>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>crm demo — simulated contact-centre day (seed {run.seed})</title>
<style>{_CSS}</style></head><body>
<h1>A simulated contact-centre day</h1>
<p class="sub">{escape(run.window)} simulated in {real_s:.0f} s real (speed ×{speed:g}),
seed {run.seed}; {len(scenario.agents)} agents in {len({a.team for a in scenario.agents})}
teams, {len(scenario.customers)} customers, {counts.get("created", 0)} interactions.
Report written {escape(run.real_end.strftime("%Y-%m-%d %H:%M UTC"))}.</p>
{caught_up}
<div class="tiles">{tiles}</div>
<div class="note"><b>What is real and what is simulated.</b> The services are real: the
customer, interaction, routing and metrics services ran as separate processes
({"started by this demo" if run.started_stack else "an already running stack"}) with their
event stores and NATS JetStream; the demo drove them only through their public gRPC APIs, like
a CTI, a chat widget, a bot and an agent desktop would, and every figure here was read back
from the metrics service. Simulated: the customers, agents, arrivals and everybody's behaviour
(talk, hold and wrap-up times, patience, transfers, escalations, survey answers), drawn from a
generator seeded with {run.seed} — the same seed gives the same day's script. Routing
decisions, waits and therefore who answered whom come from the real services and depend on
timing, so two runs with one seed agree on the arrivals but not to the second on the waits.
Time: the services stamp events with the real clock and the day ran {speed:g} times faster,
so durations are shown × {speed:g}; that also multiplies the system's own latency
(a 20 ms hop between services reads as {0.02 * speed:.0f} simulated seconds). The service
level is computed from the service's interaction export because the service's thresholds
are whole real seconds. FCR and bot containment are provisional: their windows (7 days,
24 hours) are still open.</div>

<h2>KPIs</h2>
<table><tr><th></th><th>KPI</th><th class="n">value</th><th>definition / policy</th></tr>
{table}</table>

<h2>By interval of the simulated day</h2>
<div class="grid">{"".join(by_interval)}</div>

<h2>By channel and team</h2>
<div class="grid">{"".join(by_group)}</div>

<h2>Staffing recommendation (voice)</h2>
<p>Erlang C from the metrics service (<code>GetStaffing</code> with a forecast per interval):
the phone and video contacts that reached a queue in each interval, the observed voice AHT,
target {SERVICE_LEVEL_TARGET:.0%} answered in {SERVICE_LEVEL_THRESHOLD_S} s, shrinkage
{SHRINKAGE:.0%}. {escape(data.staffing_note)}</p>
{_figure("Recommended voice agents vs. agents on shift", staffing_chart)}
<table><tr><th>interval</th><th class="n">contacts</th><th class="n">AHT</th>
<th class="n">traffic (Erl)</th><th class="n">agents</th><th class="n">scheduled</th>
<th class="n">predicted SL</th><th class="n">agents on shift taking calls</th></tr>
{staffing_rows}</table>

<h2>Top contact reasons</h2>
{_figure("Contacts by reason", reason_chart)}
<table><tr><th>reason</th><th class="n">contacts</th><th class="n">share</th></tr>
{reasons}</table>
<h3>Rising (reasons and VOC feedback topics, compared with the period before)</h3>
<table><tr><th>name</th><th>kind</th><th class="n">count</th><th class="n">before</th>
<th class="n">rise score</th></tr>{rising}</table>

<h2>What the demo did</h2>
<table>{did}
<tr><td>gRPC calls</td><td class='n'>{data.ledger.rpcs}</td></tr>
<tr><td>calls refused or failed</td><td class='n'>{errors}</td></tr></table>
<p class="sub">Backlog at the end: {data.live.backlog.open_interactions} open interactions,
{data.live.backlog.open_cases} open cases (all runs on this data directory). Services:
{escape(", ".join(f"{k} {v}" for k, v in sorted(run.endpoints.items())))}.</p>
</body></html>
"""


def _hundred(value: float | None) -> float | None:
    return None if value is None else value * 100


def _topic_kind(kind: int) -> str:
    if kind == metrics_pb2.TOPIC_KIND_CONTACT_REASON:
        return "contact reason"
    if kind == metrics_pb2.TOPIC_KIND_FEEDBACK_TOPIC:
        return "feedback topic"
    return ""


# --- reading everything back -------------------------------------------------------------------


async def wait_for_projection(
    metrics: Any, request: metrics_pb2.GetKpisRequest, ledger: Ledger, timeout_s: float
) -> bool:
    """Waits until the metrics service counts at least what the demo did (interactions,
    abandons, survey answers), has no unprojected events and its stream position stopped
    moving; False when `timeout_s` passed first."""
    import asyncio
    import time

    wanted = ledger.counts
    deadline = time.monotonic() + timeout_s
    last_position = -1
    while time.monotonic() < deadline:
        report = await metrics.GetKpis(request, timeout=30)
        live = await metrics.GetLiveState(metrics_pb2.GetLiveStateRequest(), timeout=30)
        k = report.rows[0].kpis if report.rows else metrics_pb2.Kpis()
        enough = (
            k.created >= wanted["created"]
            and k.abandoned >= wanted["abandoned"]
            and k.csat.denominator >= wanted["survey_csat"]
            and k.nps.denominator >= wanted["survey_nps"]
            and k.ces.denominator >= wanted["survey_ces"]
        )
        if enough and live.consumer_lag == 0 and report.stream_position == last_position:
            return True
        last_position = report.stream_position
        await asyncio.sleep(0.5)
    return False


async def collect(
    metrics: Any,
    run: RunInfo,
    scenario: Scenario,
    ledger: Ledger,
    simulated: Callable[[datetime], float],
    *,
    catch_up_timeout_s: float = 90.0,
) -> ReportData:
    """Everything the report shows, read from the metrics service (`metrics` is a
    `MetricsServiceStub` on a `grpc.aio` channel)."""
    speed = run.speed
    request = kpi_request(run.real_start, run.real_end, speed)
    caught_up = await wait_for_projection(metrics, request, ledger, catch_up_timeout_s)
    overall_report = await metrics.GetKpis(request, timeout=60)
    overall = overall_report.rows[0].kpis if overall_report.rows else metrics_pb2.Kpis()
    groups = {}
    for name, dimension in (
        ("channel", metrics_pb2.DIMENSION_CHANNEL),
        ("team", metrics_pb2.DIMENSION_TEAM),
        ("queue", metrics_pb2.DIMENSION_QUEUE),
    ):
        asked = kpi_request(run.real_start, run.real_end, speed, [dimension])
        groups[name] = grouped(await metrics.GetKpis(asked, timeout=60))
    exported = bytearray()
    async for chunk in metrics.ExportInteractions(
        metrics_pb2.ExportInteractionsRequest(period=request.period), timeout=120
    ):
        exported.extend(chunk.data)
    text = exported.decode("utf-8")
    rows = parse_export(text, ledger.interactions, simulated, speed)
    others = sum(1 for _ in csv.DictReader(io.StringIO(text))) - len(rows)
    reasons = await metrics.GetContactReasons(
        metrics_pb2.GetContactReasonsRequest(period=request.period, limit=12, min_count=2),
        timeout=60,
    )
    live = await metrics.GetLiveState(metrics_pb2.GetLiveStateRequest(), timeout=30)
    data = ReportData(
        run=run,
        scenario=scenario,
        ledger=ledger,
        request=request,
        overall=overall,
        by_channel=groups["channel"],
        by_team=groups["team"],
        by_queue=groups["queue"],
        reasons=reasons,
        live=live,
        rows=rows,
        staffing=[],
        staffing_note="",
        caught_up=caught_up,
        others=others,
    )
    data.staffing, data.staffing_note = await staffing(metrics, data)
    data.lines = kpi_lines(data)
    return data


async def staffing(metrics: Any, data: ReportData) -> tuple[list[StaffingRow], str]:
    """Erlang C per interval from the service, on the observed voice arrivals and AHT."""
    speed = data.run.speed
    voice = metrics_pb2.Filter(dimension=metrics_pb2.DIMENSION_CHANNEL, values=list(VOICE))
    asked = kpi_request(data.run.real_start, data.run.real_end, speed)
    asked.filters.append(voice)
    report = await metrics.GetKpis(asked, timeout=60)
    kpis = report.rows[0].kpis if report.rows else metrics_pb2.Kpis()
    aht_real = mean_of(kpis.handle_time)
    if aht_real is None:
        return [], "No voice contact was handled: nothing to size."
    handle_s = aht_real * speed
    width = interval_width(data.scenario)
    rows: list[StaffingRow] = []
    note = ""
    for index, (label, contacts) in enumerate(
        zip(interval_labels(data.scenario), voice_arrivals(data), strict=True)
    ):
        plan = await metrics.GetStaffing(
            metrics_pb2.GetStaffingRequest(
                forecast=metrics_pb2.Forecast(
                    contacts=contacts, interval_seconds=width, handle_seconds=handle_s
                ),
                target_fraction=SERVICE_LEVEL_TARGET,
                threshold_seconds=float(SERVICE_LEVEL_THRESHOLD_S),
                shrinkage=SHRINKAGE,
            ),
            timeout=30,
        )
        note = plan.note
        interval = plan.intervals[0] if plan.intervals else metrics_pb2.StaffingInterval()
        middle = (index + 0.5) * width
        rows.append(
            StaffingRow(
                label=label,
                contacts=contacts,
                handle_s=handle_s,
                erlangs=interval.traffic_erlangs,
                agents=interval.agents,
                scheduled=interval.scheduled,
                service_level=interval.service_level,
                on_duty=data.scenario.agents_on_duty(middle, "phone"),
            )
        )
    return rows, note
