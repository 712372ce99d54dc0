"""What a report section is made of (text, tables, figures, image galleries) and the context that
writes their files: every table as a CSV, every figure as a PNG, in the output folder."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import pandas as pd

from pytest_securitynet.report import figures
from pytest_securitynet.report.frames import CI_HIGH, CI_LOW, load_reported, rows_frame
from pytest_securitynet.results.merge import ResultSet
from pytest_securitynet.results.spec import BenchmarkSpec, implied_spec, resolve_specs


@dataclass
class Text:
    text: str


@dataclass
class Table:
    csv: str  # file name of the full-precision CSV
    caption: str
    display: pd.DataFrame  # formatted strings, as shown


@dataclass
class Figure:
    png: str
    caption: str


@dataclass
class Gallery:
    caption: str
    images: list[tuple[str, str]]  # (file, caption)


Block = Union[Text, Table, Figure, Gallery]


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, block: Block | None) -> None:
        if block is not None:
            self.blocks.append(block)

    @property
    def has_content(self) -> bool:
        return any(not isinstance(b, Text) for b in self.blocks)


class Context:
    """The merged results (all rows, and the passed ones), the benchmarks' specs, and the output
    folder the report writes."""

    def __init__(self, result_set: ResultSet, out_dir: Path, reported: pd.DataFrame | None = None,
                 dpi: int = figures.DPI, specs: list[BenchmarkSpec] | None = None):
        self.result_set = result_set
        self.dpi = dpi
        self.out = Path(out_dir)
        self.all = rows_frame(result_set)
        self.passed = self.all[self.all["outcome"] == "passed"] if len(self.all) else self.all
        self.reported = reported if reported is not None else load_reported([])
        benchmarks = [row["benchmark"] for row in result_set.rows]
        self.specs = specs if specs is not None else resolve_specs(benchmarks, result_set.benchmarks)
        self.files: list[str] = []
        self.correlations: list[dict[str, Any]] = []

    def spec(self, section: str) -> BenchmarkSpec | None:
        """The spec of the benchmark the special section `section` draws (e.g. `task`), if any."""
        return next((s for s in self.specs if s.section == section), None)

    def spec_of(self, benchmark: str) -> BenchmarkSpec:
        """The spec of the benchmark with id `benchmark` (an implied one when none is known)."""
        return next((s for s in self.specs if s.id == benchmark), None) or implied_spec(benchmark)

    def specs_in(self, frame: pd.DataFrame) -> list[BenchmarkSpec]:
        """The specs of the benchmarks that have rows in `frame`, in report order."""
        present = set(frame["benchmark"]) if len(frame) else set()
        return sorted((self.spec_of(b) for b in present), key=lambda s: (s.position, s.id))

    def table(self, name: str, caption: str, frame: pd.DataFrame, display: pd.DataFrame | None = None) -> Table:
        """Write `frame` as `<name>.csv`; show `display` (default: `frame` with numbers rounded)."""
        csv_name = f"{name}.csv"
        frame.to_csv(self.out / csv_name, index=False, float_format="%.10g")
        self.files.append(csv_name)
        return Table(csv=csv_name, caption=caption, display=format_frame(frame if display is None else display))

    def figure(self, fig, name: str, title: str, caption: str) -> Figure:
        png = f"{name}.png"
        figures.save(fig, self.out / png, title, self.dpi)
        self.files.append(png)
        return Figure(png=png, caption=caption)

    def note_correlation(self, figure: str, x: str, y: str, group: str, corr: figures.Corr, **extra: Any) -> None:
        """Record a correlation shown in a figure, for `correlations.csv`."""
        self.correlations.append({"figure": figure, "x": x, "y": y, "group": group, "n": corr.n,
                                  "distinct": corr.distinct, "pearson_r": corr.r, "p_value": corr.p, **extra})


def format_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers as short strings (p-values in 2 significant digits, other floats with 3 decimals); a
    metric with its interval columns (`frames.CI_LOW`, `CI_HIGH`) shows as `value ± half width`."""
    out = frame.copy()
    intervals = [c for c in out.columns if f"{c}{CI_LOW}" in out.columns and f"{c}{CI_HIGH}" in out.columns]
    for column in out.columns:
        out[column] = [format_value(v, p=str(column).startswith("p_value")) for v in out[column]]
    for column in intervals:
        low, high = (pd.to_numeric(frame[f"{column}{end}"], errors="coerce") for end in (CI_LOW, CI_HIGH))
        out[column] = [f"{text} ± {(h - lo) / 2:.3f}" if text and pd.notna(lo) and pd.notna(h) else text
                       for text, lo, h in zip(out[column], low, high)]
    return out.drop(columns=[f"{c}{end}" for c in intervals for end in (CI_LOW, CI_HIGH)])


def format_value(value: Any, p: bool = False) -> str:
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if p:
            return f"{value:.2g}"
        return str(int(value)) if value.is_integer() and abs(value) >= 1000 else f"{value:.3f}"
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value)
