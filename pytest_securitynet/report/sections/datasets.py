"""The per-dataset section: target accuracy and gap per dataset, every benchmark's headline metrics per
dataset and setting, and one line per model. Which metrics are headline comes from the specs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pytest_securitynet.report.blocks import Context, Section, Text
from pytest_securitynet.report.frames import CI_HIGH, CI_LOW, benchmark_rows, numeric_metrics
from pytest_securitynet.report.sections.common import describe, mean_spread
from pytest_securitynet.results.spec import GENERIC_METRICS_MAX, BenchmarkSpec

TASK_SECTION = "task"


def per_dataset(ctx: Context) -> Section | None:
    frame = ctx.passed
    if frame.empty:
        return None
    section = Section("datasets", "Per dataset")
    section.add(Text("Data are named by the model's dataset, with `-> copy` when the models were evaluated on a "
                     "catalogued copy of it. Cells give mean ± standard deviation over models (n = models)."))
    task_spec = ctx.spec(TASK_SECTION)
    task = benchmark_rows(frame, task_spec.id, "test_accuracy") if task_spec else frame.iloc[0:0]
    rows = []
    for data, part in frame.groupby("data"):
        row = {"data": data, "models": part["model"].nunique(), "passed rows": len(part)}
        t = task[task["data"] == data]
        if len(t):
            row["target test accuracy"] = mean_spread(t["test_accuracy"])
            if "overfit_gap" in t:
                row["overfitting gap (train - test)"] = mean_spread(t["overfit_gap"])
        rows.append(row)
    section.add(ctx.table("datasets", "Models, target accuracy and overfitting gap per dataset.", pd.DataFrame(rows)))

    long = metric_summary(ctx)
    if len(long):
        display = long.assign(cell=[_cell(r) for r in long.itertuples()])
        display = display.pivot_table(index=["benchmark", "setting", "metric"], columns="data", values="cell",
                                      aggfunc="first").reset_index()
        display.columns.name = None
        display["benchmark"] = display["benchmark"].map(lambda b: ctx.spec_of(b).short)
        section.add(ctx.table("attack-metrics-per-dataset",
                              "Every benchmark's headline metrics per dataset: mean ± spread (n). `flagged` is "
                              "the fraction of models a detector flagged.", long, display))
    wide, shown = per_model(ctx)
    if len(wide):
        bounds = [c + end for c in shown for end in (CI_LOW, CI_HIGH) if c + end in wide]
        display = wide[["model", "data", "purpose", *shown, *bounds]] if len(shown) >= 2 else wide
        section.add(ctx.table("per-model", "One line per model with headline metrics (the CSV has every benchmark "
                              "and setting).", wide, display))
    return section


def _cell(row) -> str:
    spread = f" ± {row.std:.3f}" if row.n > 1 else ""
    return f"{row.mean:.3f}{spread} ({row.n})"


def headline(frame: pd.DataFrame, spec: BenchmarkSpec) -> list[str]:
    """The spec's headline metrics present in `frame`; without declared ones, its first numeric metrics
    (not `n_*` counts, not `*_s` times)."""
    part = frame[frame["benchmark"] == spec.id].dropna(axis=1, how="all")
    if spec.headline:
        return [m for m in spec.headline if m in part.columns]
    candidates = [m for m in numeric_metrics(part) if not m.startswith("n_") and not m.endswith("_s")]
    return candidates[:GENERIC_METRICS_MAX]


def metric_summary(ctx: Context) -> pd.DataFrame:
    """Long table: per dataset, benchmark (in spec order), setting and headline metric, the values' summary."""
    frame, records = ctx.passed, []
    for spec in ctx.specs_in(frame):
        part = frame[frame["benchmark"] == spec.id]
        for metric in headline(frame, spec):
            for (data, setting), group in part.groupby(["data", "setting"]):
                values = pd.to_numeric(group[metric].map(lambda v: float(v) if isinstance(v, bool) else v),
                                       errors="coerce").dropna()
                if len(values):
                    records.append({"data": data, "benchmark": spec.id, "setting": setting, "metric": metric,
                                    **describe(values)})
    return pd.DataFrame(records)


def column(spec: BenchmarkSpec, setting: str, metric: str) -> str:
    """A per-model column: the task benchmark's metrics by name (the model's own numbers), others as
    `<short> <setting> <metric>`."""
    return metric if spec.section == TASK_SECTION else f"{spec.short} {setting} {metric}"


def per_model(ctx: Context) -> tuple[pd.DataFrame, list[str]]:
    """One row per (model, data) with every benchmark's headline metrics per setting, and the columns the
    page shows (the specs' `highlights`, else each benchmark's first headline metric in its main setting)."""
    frame = ctx.passed
    specs = {spec.id: spec for spec in ctx.specs_in(frame)}
    headlines = {b: headline(frame, s) for b, s in specs.items()}
    records: dict[tuple[str, str], dict] = {}
    for row in frame.to_dict("records"):
        record = records.setdefault((row["model"], row["data"]), {"model": row["model"], "data": row["data"],
                                                                  "purpose": row.get("purpose")})
        spec = specs[row["benchmark"]]
        for metric in headlines[row["benchmark"]]:
            value = row.get(metric)
            if value is not None and not (isinstance(value, float) and np.isnan(value)):
                record[column(spec, row["setting"], metric)] = value
                for end in (CI_LOW, CI_HIGH):  # the interval, shown as ± beside the value
                    if pd.notna(row.get(metric + end)):
                        record[column(spec, row["setting"], metric) + end] = row[metric + end]
    wide = pd.DataFrame(list(records.values()))
    task = ctx.spec(TASK_SECTION)
    first = ["model", "data", "purpose", *(m for m in (task.headline if task else ()) if m in wide)]
    wide = wide[first + [c for c in wide.columns if c not in first]]
    shown = []
    for spec in specs.values():
        setting = spec.default_setting(frame.loc[frame["benchmark"] == spec.id, "setting"])
        wanted = spec.highlights or tuple(headlines[spec.id][:1])
        for highlight in wanted:
            named, _, metric = highlight.rpartition(" ")
            name = column(spec, named or setting, metric)
            if name in wide and name not in shown:
                shown.append(name)
    return wide, shown
