"""Helpers the report's sections share: summaries of a column, dataset panels, and the rows other
benchmarks' sections borrow (the task benchmark's accuracy and gap, a benchmark's main setting)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from pytest_securitynet.report.blocks import Context
from pytest_securitynet.report.frames import benchmark_rows
from pytest_securitynet.results.spec import BenchmarkSpec, ordered

MAX_MODEL_LEGEND = 10
"""Figures name each model in a legend up to this many models."""

__all__ = ["MAX_MODEL_LEGEND", "clip", "data_panels", "describe", "data_group", "main_rows", "mean_spread",
           "membership_gap", "ordered", "section_rows", "with_target_accuracy"]


def describe(values: Iterable[float]) -> dict[str, float]:
    """n, mean, standard deviation (n > 1), min and max of the numbers among `values`."""
    v = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").dropna().astype(float)
    return {"n": int(len(v)), "mean": v.mean() if len(v) else np.nan, "std": v.std(ddof=1) if len(v) > 1 else np.nan,
            "min": v.min() if len(v) else np.nan, "max": v.max() if len(v) else np.nan}


def mean_spread(values: Iterable[float]) -> str:
    """`mean ± std (n = N)`, the way the per-dataset table shows a column."""
    d = describe(values)
    if d["n"] == 0:
        return ""
    spread = f" ± {d['std']:.3f}" if d["n"] > 1 else ""
    return f"{d['mean']:.3f}{spread} (n = {d['n']})"


def data_panels(frame: pd.DataFrame) -> list[str]:
    """The datasets of `frame`, one figure panel each."""
    return sorted(frame["data"].astype(str).unique())


def data_group(frame: pd.DataFrame) -> str | None:
    """Colour points by dataset only when there is more than one."""
    return "data" if frame["data"].nunique() > 1 else None


def clip(text, limit: int = 200) -> str:
    text = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def section_rows(ctx: Context, section: str, *metrics: str) -> tuple[BenchmarkSpec | None, pd.DataFrame]:
    """The spec drawn by the special section `section` and its passed rows having every one of `metrics`."""
    spec = ctx.spec(section)
    if spec is None:
        return None, ctx.passed.iloc[0:0]
    return spec, benchmark_rows(ctx.passed, spec.id, *metrics)


def main_rows(spec: BenchmarkSpec | None, rows: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The rows of the spec's main setting (else its first present setting), and that setting."""
    if spec is None or rows.empty:
        return rows, None
    setting = spec.default_setting(rows["setting"])
    return rows[rows["setting"] == setting], setting


def with_target_accuracy(stealing: pd.DataFrame, ctx: Context) -> pd.DataFrame:
    """Stealing rows with a `target_accuracy` column: the row's own, else the task benchmark's test accuracy."""
    if stealing.empty:
        return stealing
    out = stealing.copy()
    if "target_accuracy" not in out:
        out["target_accuracy"] = np.nan
    out["target_accuracy"] = pd.to_numeric(out["target_accuracy"], errors="coerce")
    _, task = section_rows(ctx, "task", "test_accuracy")
    if len(task):
        lookup = task.set_index(["model", "data"])["test_accuracy"]
        fill = [lookup.get((m, d), np.nan) for m, d in zip(out["model"], out["data"])]
        out["target_accuracy"] = out["target_accuracy"].fillna(pd.Series(fill, index=out.index))
    return out


def membership_gap(mia: pd.DataFrame, ctx: Context) -> tuple[pd.DataFrame, str, str]:
    """MIA rows with a `gap` column and how it was measured.

    The paper's overfitting level is train minus test accuracy (the task benchmark's `overfit_gap`);
    it is used when every model has it, else each row's own members-minus-non-members gap.
    """
    _, task = section_rows(ctx, "task", "overfit_gap")
    lookup = task.set_index(["model", "data"])["overfit_gap"] if len(task) else pd.Series(dtype=float)
    keys = list(zip(mia["model"], mia["data"]))
    if len(task) and all(k in lookup.index for k in keys):
        return mia.assign(gap=[float(lookup[k]) for k in keys]), "gap_train_test", \
            "the task benchmark's train minus test accuracy"
    return mia.assign(gap=pd.to_numeric(mia.get("overfit_gap"), errors="coerce")), "gap_members", \
        "accuracy on the attacker's members minus its non-members (the task benchmark is missing for some models)"
