"""Render a :class:`DriftReport` as a markdown table (Dagster metadata) or a standalone HTML page.

The HTML page is self-contained: inline CSS, no scripts, no fonts, images or links to fetch, so
it can be stored as an artifact and opened offline.
"""

from __future__ import annotations

import functools
import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: base imports this module to render its reports
    from mlx_plugins.drift_detectors.base import ColumnDrift, DriftReport

_P_VALUE_TESTS = {"ks", "chi2", "chi2_gof"}
_SCORE_CAP = 2.0


def drift_score(column: ColumnDrift) -> float:
    """How far a column is past its threshold, on one scale for every test: 1.0 is the threshold,
    above it the column drifted. Distances: ``statistic / threshold``. p-value tests:
    ``ln(p) / ln(threshold)``. Capped at 2.0 (a p-value of 0 scores 2.0)."""
    if column.test in _P_VALUE_TESTS and column.p_value is not None:
        if column.p_value <= 0.0:
            return _SCORE_CAP
        if column.p_value >= 1.0:
            return 0.0
        score = math.log(column.p_value) / math.log(column.threshold)
    else:
        score = column.statistic / column.threshold if column.threshold > 0 else 0.0
    return min(max(score, 0.0), _SCORE_CAP)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    size = abs(value)
    if size >= 1e5 or size < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4g}"


_escape = functools.lru_cache(maxsize=4096)(html.escape)
"""``html.escape``, remembered: a daily page repeats the same column names, kinds, tests and
statistic names (one page per day of a backfill)."""


def _ranked(report: DriftReport) -> list[tuple[ColumnDrift, float]]:
    """Each column with its :func:`drift_score`, drifted columns first, then by score."""
    scored = [(c, drift_score(c)) for c in report.columns]
    return sorted(scored, key=lambda cs: (not cs[0].drifted, -cs[1]))


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _summary(report: DriftReport) -> str:
    drifted = len(report.drifted_columns)
    verdict = "yes" if report.dataset_drift else "no"
    return (
        f"Dataset drift: {verdict}. {drifted} of {len(report.columns)} columns drifted "
        f"({_pct(report.drift_share)}; the dataset drifts at {_pct(report.share_threshold)}). "
        f"Reference rows: {report.reference_rows:,}; current rows: {report.current_rows:,}."
    )


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(
    report: DriftReport, *, only_drifted: bool = False, max_rows: int | None = None
) -> str:
    """A summary sentence and one table row per column, drifted columns first.

    ``only_drifted`` keeps only drifted columns; ``max_rows`` cuts the table (a last line says
    how many rows were left out).
    """
    columns = [c for c, _ in _ranked(report)]
    if only_drifted:
        columns = [c for c in columns if c.drifted]
    left_out = 0
    if max_rows is not None and len(columns) > max_rows:
        left_out = len(columns) - max_rows
        columns = columns[:max_rows]
    lines = [
        f"**{_summary(report)}**",
        "",
        "| column | kind | test | statistic | p-value | threshold | drifted "
        "| missing (ref / cur) | note |",
        "|---|---|---|---:|---:|---:|:---:|---:|---|",
    ]
    for c in columns:
        lines.append(
            "| "
            + " | ".join(
                [
                    _md_cell(c.column),
                    c.kind,
                    c.test,
                    _num(c.statistic),
                    _num(c.p_value),
                    _num(c.threshold),
                    "**yes**" if c.drifted else "no",
                    f"{_pct(c.reference_null_share)} / {_pct(c.current_null_share)}",
                    _md_cell(c.note),
                ]
            )
            + " |"
        )
    if left_out:
        lines.append("")
        lines.append(f"_{left_out} more columns not shown._")
    if report.skipped_columns:
        lines.append("")
        lines.append("Not compared: " + ", ".join(_md_cell(c) for c in report.skipped_columns))
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1f2328}
h1{font-size:1.4rem;margin:0 0 .5rem}
.summary{padding:.75rem 1rem;border-radius:6px;margin:1rem 0;background:#eef6ee;
border:1px solid #9fd19f}
.summary.drift{background:#fdeeee;border-color:#e5a0a0}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border-bottom:1px solid #d8dee4;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.drifted td:first-child{border-left:4px solid #cf222e}
.tag{display:inline-block;padding:0 .4rem;border-radius:3px;font-size:.8rem}
.tag.yes{background:#cf222e;color:#fff}.tag.no{background:#d8dee4}
.bar{position:relative;width:140px;height:10px;background:#eaeef2;border-radius:2px}
.bar span{position:absolute;left:0;top:0;bottom:0;background:#2da44e;border-radius:2px}
.bar span.over{background:#cf222e}
.bar i{position:absolute;left:50%;top:-2px;bottom:-2px;border-left:2px solid #57606a}
details{margin:.2rem 0}summary{cursor:pointer;color:#0969da}
dl{display:grid;grid-template-columns:max-content max-content;gap:0 1rem;margin:.3rem 0}
dt{color:#57606a}dd{margin:0;font-variant-numeric:tabular-nums}
.meta{color:#57606a;font-size:.85rem}
"""


def _bar(column: ColumnDrift, score: float) -> str:
    width = 100.0 * score / _SCORE_CAP
    cls = ' class="over"' if column.drifted else ""
    return (
        f'<div class="bar" title="score {score:.3g} (1 = threshold)">'
        f'<span{cls} style="width:{width:.1f}%"></span><i></i></div>'
    )


def _details(column: ColumnDrift) -> str:
    rows = "".join(
        [f"<dt>{_escape(k)}</dt><dd>{_num(v)}</dd>" for k, v in sorted(column.stats.items())]
    )
    rows += (
        f"<dt>reference values</dt><dd>{column.reference_rows:,}</dd>"
        f"<dt>current values</dt><dd>{column.current_rows:,}</dd>"
    )
    return f"<details><summary>all statistics</summary><dl>{rows}</dl></details>"


def render_html(report: DriftReport, *, title: str = "Data drift report") -> str:
    """A standalone HTML page: summary, then one row per column (drifted first) with a bar of
    its :func:`drift_score` against the threshold and every computed statistic."""
    esc = html.escape
    body_rows = []
    for c, score in _ranked(report):
        body_rows.append(
            f'<tr class="{"drifted" if c.drifted else "stable"}">'
            f"<td>{_escape(c.column)}</td><td>{_escape(c.kind)}</td><td>{_escape(c.test)}</td>"
            f'<td class="num">{_num(c.statistic)}</td><td class="num">{_num(c.p_value)}</td>'
            f'<td class="num">{_num(c.threshold)}</td><td>{_bar(c, score)}</td>'
            f'<td><span class="tag {"yes" if c.drifted else "no"}">'
            f"{'drift' if c.drifted else 'ok'}</span></td>"
            f'<td class="num">{_pct(c.reference_null_share)} / {_pct(c.current_null_share)}</td>'
            f"<td>{esc(c.note)}{_details(c)}</td></tr>"  # notes vary by day: not cached
        )
    skipped = (
        f'<p class="meta">Not compared: {esc(", ".join(report.skipped_columns))}</p>'
        if report.skipped_columns
        else ""
    )
    detector = f" Detector: {esc(report.detector)}." if report.detector else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1>"
        f'<div class="summary{" drift" if report.dataset_drift else ""}">'
        f"{esc(_summary(report))}</div>"
        "<table><thead><tr><th>column</th><th>kind</th><th>test</th><th>statistic</th>"
        "<th>p-value</th><th>threshold</th><th>score</th><th>drift</th>"
        "<th>missing (ref / cur)</th><th>notes</th></tr></thead><tbody>"
        + "".join(body_rows)
        + "</tbody></table>"
        + skipped
        + f'<p class="meta">Score: statistic / threshold for distances, ln(p) / ln(threshold)'
        f" for p-value tests; the mark is the threshold.{detector}</p>"
        "</body></html>\n"
    )


def write_html(report: DriftReport, path: str | Path, *, title: str = "Data drift report") -> Path:
    """Write :func:`render_html` to ``path`` (parents created) and return the path."""
    from mlx_plugins.kernel.atomic import atomic_write_text  # unique temp + atomic rename

    return atomic_write_text(Path(path), render_html(report, title=title))


def dagster_metadata(report: DriftReport, *, max_rows: int = 50) -> dict[str, Any]:
    """Metadata for a Dagster asset or check: headline numbers and the markdown table."""
    import dagster as dg

    meta: dict[str, Any] = {
        "dataset_drift": dg.MetadataValue.bool(report.dataset_drift),
        "drift_share": dg.MetadataValue.float(report.drift_share),
        "drifted_columns": dg.MetadataValue.json(report.drifted_columns),
        "reference_rows": dg.MetadataValue.int(report.reference_rows),
        "current_rows": dg.MetadataValue.int(report.current_rows),
        "drift_report": dg.MetadataValue.md(render_markdown(report, max_rows=max_rows)),
    }
    return meta
