"""The sections about the inputs themselves: what was merged, conflicting duplicates, rows that did not pass."""

from __future__ import annotations

import pandas as pd

from pytest_securitynet.report.blocks import Context, Section, Text
from pytest_securitynet.report.sections.common import clip


def overview(ctx: Context) -> Section | None:
    rs, frame = ctx.result_set, ctx.all
    section = Section("overview", "Overview")
    if frame.empty:
        section.add(Text(f"The {len(rs.sources)} input file(s) hold no result rows."))
        return section
    n_passed = int((frame["outcome"] == "passed").sum())
    section.add(Text(f"{len(frame)} result rows ({n_passed} passed) for {frame['model'].nunique()} models, "
                     f"merged from {len(rs.sources)} file(s). Only passed rows enter the analyses below."))
    if rs.collapsed:
        section.add(Text(f"{rs.collapsed} row(s) appeared identically in more than one file and were counted once."))
    inputs = pd.DataFrame([{
        "file": str(s.path), "status": s.run.get("status"), "host": s.run.get("host"),
        "started_at": s.run.get("started_at"), "finished_at": s.run.get("finished_at"), "rows": s.rows,
        "command": " ".join(str(a) for a in (s.run.get("argv") or [])),
    } for s in rs.sources])
    section.add(ctx.table("inputs", "Input files and the runs that wrote them.", inputs))
    counts = frame.pivot_table(index=["benchmark"], columns="outcome", values="key", aggfunc="count", fill_value=0)
    counts = counts.reset_index()
    counts.columns.name = None
    section.add(ctx.table("rows-by-benchmark", "Result rows per benchmark and outcome.", counts))
    return section


def duplicates(ctx: Context) -> Section | None:
    conflicts = ctx.result_set.conflicts
    if not conflicts:
        return None
    section = Section("duplicates", "Duplicate rows with different results")
    section.add(Text(f"{len(conflicts)} row key(s) (model::benchmark::setting) appear in more than one input with "
                     "different outcomes or metrics. The report uses the kept row: a passed row over one that did "
                     "not pass, then the one that finished last. Check whether the inputs really belong together."))
    table = pd.DataFrame([{"key": c.key, "kept_from": c.kept, "dropped_from": c.dropped, "kept_outcome": c.kept_outcome,
                           "dropped_outcome": c.dropped_outcome, "differences (kept vs dropped)": "; ".join(c.differences)}
                          for c in conflicts])
    section.add(ctx.table("duplicates", "Conflicting duplicate rows.", table))
    return section


MAX_MESSAGE = 2000
"""A skip reason or failure line is shown whole; only a longer text (a traceback) is cut."""


def not_passed(ctx: Context) -> Section | None:
    frame = ctx.all
    if frame.empty:
        return None
    bad = frame[frame["outcome"] != "passed"]
    if bad.empty:
        return None
    section = Section("not-passed", "Failed, skipped and errored tests")
    section.add(Text(f"{len(bad)} row(s) did not pass; they are left out of every analysis."))
    table = bad[["model", "benchmark", "setting", "outcome", "message"]].copy()
    table["message"] = [clip(m, MAX_MESSAGE) for m in table["message"]]
    section.add(ctx.table("not-passed", "Rows that did not pass, with their reason.",
                          table.sort_values(["outcome", "benchmark", "model", "setting"])))
    return section
