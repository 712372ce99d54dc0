"""Merged result rows as pandas tables, and the reported-numbers file.

`rows_frame` makes one table row per result row: the row's key fields, the model's annotations
(purpose, year, venue type) and every scalar metric as a column. `data` names the data a number
was measured on: the model's dataset, or `dataset -> copy` when it was evaluated on a catalogued
copy (`--securitynet-dataset`), since numbers on different copies are not comparable.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from pytest_securitynet.catalog.entries import BUILTIN_CATALOG
from pytest_securitynet.results.intervals import interval_of
from pytest_securitynet.results.rows import row_key
from pytest_securitynet.results.merge import ResultSet

BASE_COLUMNS = ("key", "model", "benchmark", "setting", "outcome", "dataset", "dataset_source", "data", "purpose",
                "year", "venue", "venue_type", "model_type", "architecture", "device", "seed", "worker",
                "wall_time_s", "message", "file")
REPORTED_COLUMNS = ("model", "benchmark", "setting", "metric", "value")
CI_LOW, CI_HIGH = "__ci_low", "__ci_high"
"""Suffixes of the columns holding a metric's 95% interval (`auc__ci_low`), beside the metric's column."""
BUILTIN_REPORTED = BUILTIN_CATALOG / "reported"


def data_label(dataset: Any, source: Any) -> str:
    dataset = str(dataset) if dataset else "?"
    return dataset if not source or source == dataset else f"{dataset} -> {source}"


def rows_frame(result_set: ResultSet) -> pd.DataFrame:
    """Every merged row (any outcome) as a flat table; see the module docstring."""
    records = []
    for row in result_set.rows:
        info = result_set.models.get(row["model"]) or {}
        notes = info.get("annotations") or {}
        key = row_key(row)
        record: dict[str, Any] = {
            "key": key, "model": row["model"], "benchmark": row["benchmark"], "setting": row["setting"],
            "outcome": row.get("outcome"), "dataset": row.get("dataset") or info.get("dataset"),
            "dataset_source": row.get("dataset_source") or row.get("dataset") or info.get("dataset"),
            "purpose": notes.get("purpose") or info.get("purpose"), "year": _number(notes.get("year")),
            "venue": notes.get("venue"), "venue_type": notes.get("venue_type"),
            "model_type": info.get("model_type"), "architecture": info.get("architecture"),
            "device": row.get("device"), "seed": row.get("seed"), "worker": row.get("worker"),
            "wall_time_s": row.get("wall_time_s"), "message": row.get("message"),
            "file": str(result_set.origin.get(key, "")),
        }
        record["data"] = data_label(record["dataset"], record["dataset_source"])
        metrics = row.get("metrics") or {}
        for name, value in metrics.items():
            if value is None or isinstance(value, (bool, int, float, str)):
                column = f"metric_{name}" if name in BASE_COLUMNS else name
                record[column] = value
                interval = interval_of(metrics, name)
                if interval is not None:
                    record[column + CI_LOW], record[column + CI_HIGH] = interval
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=None if records else list(BASE_COLUMNS))
    return frame


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def benchmark_rows(frame: pd.DataFrame, benchmark: str, *metrics: str) -> pd.DataFrame:
    """The passed rows of one benchmark that have every one of `metrics`, without all-empty columns."""
    if frame.empty or "benchmark" not in frame:
        return frame.iloc[0:0]
    part = frame[(frame["benchmark"] == benchmark) & (frame["outcome"] == "passed")]
    missing = [m for m in metrics if m not in part.columns]
    if missing:
        return part.iloc[0:0]
    for name in metrics:
        part = part[pd.to_numeric(part[name], errors="coerce").notna()]
    if part.empty:
        return part.iloc[0:0]
    part = part.dropna(axis=1, how="all").copy()
    for name in metrics:
        part[name] = pd.to_numeric(part[name])
    return part


def numeric_metrics(frame: pd.DataFrame) -> list[str]:
    """Metric columns of `frame` holding numbers (not booleans)."""
    out = []
    for column in frame.columns:
        if column in BASE_COLUMNS or str(column).endswith((CI_LOW, CI_HIGH)):
            continue
        values = frame[column].dropna()
        if len(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out.append(column)
    return out


# --- reported numbers ---------------------------------------------------------------------------

def reported_paths(specs: Iterable[str] | None) -> list[Path]:
    """The reported-numbers CSVs to read: `specs` (files or folders of `*.csv`), else the built-in ones."""
    if specs is None:
        return sorted(BUILTIN_REPORTED.glob("*.csv")) if BUILTIN_REPORTED.is_dir() else []
    out = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            out.extend(sorted(path.glob("*.csv")))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"--reported {path}: no such file or folder")
    return out


def load_reported(paths: Iterable[Path]) -> pd.DataFrame:
    """Long table `model, benchmark, setting, metric, value, source` from reported-numbers CSVs.

    Each CSV has a header with at least `model,benchmark,setting,metric,value` (other columns are
    ignored); values that are not finite numbers are skipped. Where two files give the same
    (model, benchmark, setting, metric), the later one wins.
    """
    records = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REPORTED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: a reported-numbers CSV needs the columns {', '.join(REPORTED_COLUMNS)} "
                                 f"(missing: {', '.join(missing)})")
            for line in reader:
                value = _number(line["value"])
                if value is not None:
                    records.append({**{c: line[c] for c in REPORTED_COLUMNS[:4]}, "value": value, "source": str(path)})
    frame = pd.DataFrame.from_records(records, columns=[*REPORTED_COLUMNS, "source"])
    return frame.drop_duplicates(subset=list(REPORTED_COLUMNS[:4]), keep="last").reset_index(drop=True)
