"""What a report section is made of (text, tables, figures, image galleries) and the context that
writes their files: every table as a CSV, every figure as a PNG, in the output folder."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import pandas as pd

from pytest_securitynet.report import figures
from pytest_securitynet.report.frames import load_reported, rows_frame
from pytest_securitynet.results.merge import ResultSet


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
    """The merged results (all rows, and the passed ones) plus the output folder the report writes."""

    def __init__(self, result_set: ResultSet, out_dir: Path, reported: pd.DataFrame | None = None,
                 dpi: int = figures.DPI):
        self.result_set = result_set
        self.dpi = dpi
        self.out = Path(out_dir)
        self.all = rows_frame(result_set)
        self.passed = self.all[self.all["outcome"] == "passed"] if len(self.all) else self.all
        self.reported = reported if reported is not None else load_reported([])
        self.files: list[str] = []
        self.correlations: list[dict[str, Any]] = []

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
                                  "pearson_r": corr.r, "p_value": corr.p, **extra})


def format_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers as short strings (p-values in 2 significant digits, other floats with 3 decimals)."""
    out = frame.copy()
    for column in out.columns:
        out[column] = [format_value(v, p=str(column).startswith("p_value")) for v in out[column]]
    return out


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
