"""Markdown and HTML rendering of a drift report."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import dagster as dg
import pytest

from mlx_plugins.drift_detectors.base import ColumnDrift, DriftReport
from mlx_plugins.drift_detectors.report import (
    dagster_metadata,
    drift_score,
    render_html,
    render_markdown,
    write_html,
)


def _col(name: str, test: str, statistic: float, p: float | None, thr: float, drifted: bool):
    return ColumnDrift(
        column=name,
        kind="numeric" if test in ("ks", "wasserstein") else "categorical",
        test=test,
        statistic=statistic,
        p_value=p,
        threshold=thr,
        drifted=drifted,
        stats={"psi": 0.01, "extra": None},
        note="",
        reference_rows=100,
        current_rows=90,
        reference_null_share=0.0,
        current_null_share=0.1,
    )


@pytest.fixture
def report() -> DriftReport:
    cols = (
        _col("calm", "wasserstein", 0.02, None, 0.1, False),
        _col("a|b <script>alert(1)</script>", "chi2", 40.0, 1e-9, 0.05, True),
        _col("fare", "ks", 0.3, 0.001, 0.05, True),
    )
    return DriftReport(
        columns=cols,
        reference_rows=1000,
        current_rows=900,
        drift_share=2 / 3,
        share_threshold=0.5,
        dataset_drift=True,
        skipped_columns=("when",),
        detector="drift_detector.polars@0.1.0",
    )


def test_drift_score_puts_every_test_on_one_scale() -> None:
    assert drift_score(_col("a", "ks", 0.1, 0.05, 0.05, False)) == pytest.approx(1.0)
    assert drift_score(_col("a", "ks", 0.1, 0.0, 0.05, True)) == 2.0
    assert drift_score(_col("a", "ks", 0.0, 1.0, 0.05, False)) == 0.0
    assert drift_score(_col("a", "wasserstein", 0.05, None, 0.1, False)) == pytest.approx(0.5)
    assert drift_score(_col("a", "wasserstein", 9.0, None, 0.1, True)) == 2.0


def test_markdown_table(report: DriftReport) -> None:
    md = render_markdown(report)
    lines = md.splitlines()
    assert lines[0].startswith("**Dataset drift: yes. 2 of 3 columns drifted (66.7%")
    header = next(i for i, line in enumerate(lines) if line.startswith("| column |"))
    rows = lines[header + 2 : header + 5]
    assert [r.split(" | ")[0] for r in rows] == [
        "| a\\|b <script>alert(1)</script>",
        "| fare",
        "| calm",
    ]
    assert all(r.count(" | ") == 8 for r in rows)  # pipes inside names are escaped
    assert "| **yes** |" in rows[0] and "| no |" in rows[2]
    assert "0.0% / 10.0%" in rows[2]
    assert md.endswith("Not compared: when")
    assert report.to_markdown() == md


def test_markdown_filters_and_truncates(report: DriftReport) -> None:
    only = render_markdown(report, only_drifted=True)
    assert "| calm |" not in only and "| fare |" in only
    short = render_markdown(report, max_rows=1)
    assert "| fare |" not in short and "_2 more columns not shown._" in short


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_standalone_and_escaped(report: DriftReport, tmp_path: Path) -> None:
    page = render_html(report, title="Flights <drift>")
    assert page.startswith("<!DOCTYPE html>")
    parsed = _Collector()
    parsed.feed(page)
    assert "script" not in parsed.tags  # the column named <script> is text, not markup
    assert not {"img", "link", "iframe", "object"} & set(parsed.tags)
    assert not [v for k, v in parsed.attrs if k in ("src", "href")]
    assert not re.search(r"https?://|@import|url\(", page)
    text = " ".join(parsed.text)
    assert "a|b <script>alert(1)</script>" in text and "Flights <drift>" in text
    assert parsed.tags.count("tr") == 1 + len(report.columns)
    assert page.count('class="drifted"') == 2 and page.count('class="stable"') == 1
    assert "drift_detector.polars@0.1.0" in text
    out = write_html(report, tmp_path / "reports" / "drift.html")
    assert out.read_text(encoding="utf-8") == render_html(report)
    assert report.to_html() == render_html(report)


def test_dagster_metadata(report: DriftReport) -> None:
    meta = dagster_metadata(report)
    assert isinstance(meta["drift_report"], dg.MarkdownMetadataValue)
    assert meta["dataset_drift"].value is True
    assert meta["drifted_columns"].value == ["a|b <script>alert(1)</script>", "fare"]
    assert meta["drift_share"].value == pytest.approx(2 / 3)
