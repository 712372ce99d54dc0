"""Robust vs standard models: RobustBench's scatter (each model's AutoAttack robust accuracy against
its clean accuracy on the same points) and the other benchmarks split by whether a model was trained
to be robust: membership AUC, model-stealing agreement, backdoor detectors' flag rates and task
accuracy. No peer benchmark publishes that split; robustness leaderboards measure only evasion.

A model is `robust` when its catalog annotation `training` names a robust training (RobustBench's
`adversarial`, `corruption-robust`), `standard` when it says `standard`; without that annotation,
the codebook's purpose decides (`security` models are the adversarially trained ones, `benchmark`
models standard). The annotations come from the results file's model records, else from the
built-in catalog.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from pytest_securitynet.report import figures as F
from pytest_securitynet.report.blocks import Context, Section, Text
from pytest_securitynet.report.frames import benchmark_rows
from pytest_securitynet.report.sections.common import main_rows, section_rows

AUTOATTACK = "evasion.autoattack"
ROBUST, STANDARD = "robust", "standard"
GROUPS = (STANDARD, ROBUST)
ROBUST_ACCURACY_LABEL = "robust accuracy under AutoAttack (fraction 0-1)"
SPLIT = (  # (special section, metric, what it is)
    ("membership", "auc", "membership inference AUC"),
    ("stealing", "agreement", "model stealing agreement"),
    ("backdoor", "flagged", "backdoor detector flag rate"),
    ("task", "test_accuracy", "task test accuracy"),
)


def robustness_of(annotations: Mapping[str, Any]) -> tuple[str | None, str]:
    """(`robust`, `standard` or None, the annotation that decided) for one model's annotations."""
    training = annotations.get("training")
    if training:
        return (STANDARD if str(training) == "standard" else ROBUST), f"training = {training}"
    purpose = annotations.get("purpose")
    if purpose in ("security", "benchmark"):
        return (ROBUST if purpose == "security" else STANDARD), f"purpose = {purpose}"
    return None, "no training or purpose annotation"


def model_robustness(ctx: Context, models: list[str]) -> pd.DataFrame:
    """Per model: its group and the annotation that decided, from the results file, else the catalog."""
    records, unknown = {}, []
    for model in models:
        notes = (ctx.result_set.models.get(model) or {}).get("annotations") or {}
        group, basis = robustness_of(notes)
        if group is None:
            unknown.append(model)
        records[model] = (group, basis)
    if unknown:
        for model, notes in _catalog_annotations(unknown).items():
            group, basis = robustness_of(notes)
            records[model] = (group, f"{basis} (catalog)") if group else records[model]
    return pd.DataFrame([{"model": m, "robustness": g, "robustness_basis": b} for m, (g, b) in records.items()],
                        columns=["model", "robustness", "robustness_basis"])


def _catalog_annotations(models: list[str]) -> dict[str, dict]:
    """The built-in catalog's annotations of `models` (an older results file may not record them)."""
    from pytest_securitynet.catalog.entries import load_catalog
    from pytest_securitynet.errors import SecurityNetError

    try:
        catalog = load_catalog()
    except (SecurityNetError, OSError):
        return {}
    return {m: catalog.models[m].annotations for m in models if m in catalog.models}


def robust_vs_standard(ctx: Context) -> Section | None:
    frame = ctx.passed
    if frame.empty:
        return None
    groups = model_robustness(ctx, sorted(frame["model"].astype(str).unique()))
    frame = frame.merge(groups, on="model", how="left")
    section = Section("robustness", "Robust vs standard models")
    section.add(Text("Models trained to be robust (the catalog's `training` annotation: adversarial or "
                     "corruption-robust; without it, the codebook's `security` purpose) against standardly "
                     "trained ones. Each model's group and the annotation that decided are in "
                     "`robustness-models.csv`."))
    _autoattack_scatter(ctx, section, frame)
    _split(ctx, section, frame)
    if not section.has_content:
        return None
    section.add(ctx.table("robustness-models", "Each model's group and the annotation that decided it.", groups))
    return section


def _autoattack_scatter(ctx: Context, section: Section, frame: pd.DataFrame) -> None:
    """RobustBench's scatter: robust against clean accuracy, one panel per AutoAttack setting."""
    rows = benchmark_rows(frame, AUTOATTACK, "robust_accuracy", "clean_accuracy")
    if rows.empty:
        return
    rows = rows.assign(robustness=rows["robustness"].fillna("unknown"),
                       unreliable=rows["unreliable"].fillna(False).astype(bool) if "unreliable" in rows else False)
    settings = sorted(rows["setting"].unique(), key=lambda s: (rows.loc[rows["setting"] == s, "eps"].max()
                                                               if "eps" in rows else 0, s))
    fig, axes = F.panels(len(settings), panel=(5.0, 4.2))
    for ax, setting in zip(axes, settings):
        part = rows[rows["setting"] == setting]
        corr = F.scatter_groups(ax, part, "clean_accuracy", "robust_accuracy", "robustness", diagonal=True,
                                title=_setting_title(part, setting), xlabel=F.LABELS["clean_accuracy"],
                                ylabel=ROBUST_ACCURACY_LABEL)
        for name, value in corr.items():
            ctx.note_correlation("robustness-autoattack", "clean_accuracy", "robust_accuracy", f"{name} / {setting}", value)
        flagged = part[part["unreliable"]]
        if len(flagged):  # RobustBench's flag: the evaluation itself looks broken for these points
            ax.scatter(flagged["clean_accuracy"], flagged["robust_accuracy"], s=90, marker="x", color="red",
                       linewidth=1.2, zorder=4)
    section.add(ctx.figure(fig, "robustness-autoattack", "Robust vs clean accuracy (AutoAttack)",
                           "Each model's robust accuracy under the standard AutoAttack ensemble against its clean "
                           "accuracy on the same points, one panel per setting, coloured by robust/standard "
                           "(RobustBench's scatter); a red x marks an evaluation flagged unreliable."))
    if "n_points" in rows:
        rows["n_points"] = pd.to_numeric(rows["n_points"], errors="coerce").astype("Int64")
    columns = [c for c in ("model", "data", "robustness", "setting", "norm", "eps", "eps_255", "n_points",
                           "clean_accuracy", "robust_accuracy", "accuracy_drop", "unreliable") if c in rows]
    section.add(ctx.table("robustness-autoattack", "Clean and robust accuracy per model and AutoAttack setting.",
                          rows[columns].sort_values(["setting", "robustness", "model"])))


def _setting_title(part: pd.DataFrame, setting: str) -> str:
    if "eps" not in part or part["eps"].isna().all():
        return setting
    eps = float(part["eps"].max())
    norm = part["norm"].dropna().iloc[0] if "norm" in part and part["norm"].notna().any() else ""
    shown = f"{eps * 255:.3g}/255" if norm == "Linf" else f"{eps:g}"
    return f"{setting}\n{norm} eps = {shown}".rstrip()


def split_table(ctx: Context, frame: pd.DataFrame) -> pd.DataFrame:
    """Long table: per benchmark, setting, metric, data and group, the models' n, mean, std, min, max."""
    records = []
    for section_name, metric, what in SPLIT:
        spec, rows = section_rows(ctx, section_name)
        if spec is None or rows.empty or metric not in rows:
            continue
        rows = rows[rows[metric].notna()].merge(frame[["key", "robustness"]], on="key", how="left")
        rows = rows[rows["robustness"].isin(GROUPS)]
        if metric == "flagged":  # a rate per detector: every setting is one
            settings = sorted(rows["setting"].unique())
        else:
            rows, setting = main_rows(spec, rows)
            settings = [setting] if setting else []
        for setting in settings:
            for data, part in rows[rows["setting"] == setting].groupby("data"):
                if part["robustness"].nunique() < 2:
                    continue  # one group only: nothing to compare
                for group in GROUPS:
                    values = pd.to_numeric(part.loc[part["robustness"] == group, metric].astype(float))
                    records.append({"benchmark": spec.id, "setting": setting, "metric": metric, "what": what,
                                    "data": data, "robustness": group, "n": int(len(values)),
                                    "mean": values.mean(), "std": values.std(ddof=1) if len(values) > 1 else np.nan,
                                    "min": values.min(), "max": values.max()})
    return pd.DataFrame(records)


def _split(ctx: Context, section: Section, frame: pd.DataFrame) -> None:
    table = split_table(ctx, frame)
    if table.empty:
        return
    display = []
    for (benchmark, setting, metric, data), part in table.groupby(["benchmark", "setting", "metric", "data"], sort=False):
        by = part.set_index("robustness")
        line = {"benchmark": benchmark, "setting": setting, "metric": metric, "data": data}
        for group in GROUPS:
            r = by.loc[group]
            spread = f" ± {r['std']:.3f}" if r["n"] > 1 else ""
            line[group] = f"{r['mean']:.3f}{spread} (n = {r['n']})"
        line["robust - standard"] = f"{by.loc[ROBUST, 'mean'] - by.loc[STANDARD, 'mean']:+.3f}"
        display.append(line)
    section.add(ctx.table("robustness-split", "Membership AUC, stealing agreement, detector flag rate and task "
                          "accuracy of robust and standard models (mean ± std over models), per dataset; each "
                          "benchmark in its main setting, the detectors each on their own.", table,
                          pd.DataFrame(display)))
    panels = list(table.groupby(["benchmark", "setting", "metric", "data"], sort=False).groups)
    fig, axes = F.panels(len(panels), ncols=min(4, len(panels)), panel=(3.6, 3.4))
    for ax, (benchmark, setting, metric, data) in zip(axes, panels):
        rows = benchmark_rows(ctx.passed, benchmark).merge(frame[["key", "robustness"]], on="key", how="left")
        rows = rows[(rows["setting"] == setting) & (rows["data"] == data) & rows["robustness"].isin(GROUPS)]
        rows = rows.assign(**{metric: pd.to_numeric(rows[metric].astype(float))})
        what = table.loc[table["metric"] == metric, "what"].iloc[0]
        what = "detector flagged the model (1) or not (0)" if metric == "flagged" else what
        F.strip_by_category(ax, rows, "robustness", metric, order=GROUPS, xlabel="model", ylabel=what,
                            title=f"{setting} ({data})", identify="model")
    section.add(ctx.figure(fig, "robustness-split", "Benchmarks on robust vs standard models",
                           "Each model's number in each benchmark's main setting (detectors: flagged 1, not 0), "
                           "standard models left, robust right."))
