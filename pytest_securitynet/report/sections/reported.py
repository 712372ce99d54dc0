"""The measured-vs-reported section: each measured metric against the reported number for the same
model, benchmark and setting (e.g. the SecurityNet database's)."""

from __future__ import annotations

import pandas as pd

from pytest_securitynet.report import figures as F
from pytest_securitynet.report.blocks import Context, Section, Text


def reported(ctx: Context) -> Section | None:
    ref, frame = ctx.reported, ctx.passed
    if ref is None or ref.empty or frame.empty:
        return None
    metrics = sorted(set(ref["metric"]) & set(frame.columns))
    if not metrics:
        return None
    measured = frame.melt(id_vars=["model", "benchmark", "setting", "data"], value_vars=metrics, var_name="metric",
                          value_name="measured")
    measured["measured"] = pd.to_numeric(measured["measured"], errors="coerce")
    both = measured.dropna(subset=["measured"]).merge(ref, on=["model", "benchmark", "setting", "metric"])
    if both.empty:
        return None
    both = both.rename(columns={"value": "reported"})
    both["difference"] = both["measured"] - both["reported"]
    both = both[["model", "data", "benchmark", "setting", "metric", "reported", "measured", "difference", "source"]]
    both = both.sort_values(["benchmark", "setting", "metric", "model"]).reset_index(drop=True)
    section = Section("reported", "Measured vs reported")
    section.add(Text(f"{len(both)} measured number(s) of {both['model'].nunique()} model(s) have a reported value "
                     "(e.g. from the SecurityNet database). Reported numbers may come from other data copies, "
                     "samples and seeds; `data` names what was measured here."))
    pairs = list(both.groupby(["benchmark", "setting", "metric"]))
    fig, axes = F.panels(len(pairs))
    for ax, ((benchmark, setting, metric), part) in zip(axes, pairs):
        label = f"{metric} ({ctx.spec_of(benchmark).short}, {setting})"
        corr = F.scatter_groups(ax, part, "reported", "measured", None, title=label, diagonal=True,
                                xlabel=f"reported {metric} (as published)", ylabel=f"measured {metric} (this run)")["all"]
        ctx.note_correlation("reported-vs-measured", "reported", "measured", label, corr)
    section.add(ctx.figure(fig, "reported-vs-measured", "Measured vs reported numbers",
                           "Each measured metric against the reported value for the same model, benchmark and "
                           "setting; the dashed line is y = x."))
    section.add(ctx.table("reported-vs-measured", "Measured and reported values, and their difference "
                          "(measured - reported).", both))
    return section
