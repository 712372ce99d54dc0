"""The benchmark-vs-security-models section (paper §2, §4): task accuracy and gap, model stealing
and membership inference coloured by the model's purpose. It draws the benchmarks whose specs name
the `task`, `stealing` and `membership` sections, each in its main setting. Models without a
`purpose` annotation are left out of the comparison, and the section names them."""

from __future__ import annotations

import pandas as pd

from pytest_securitynet.report import figures as F
from pytest_securitynet.report.blocks import Context, Section, Text
from pytest_securitynet.report.sections.common import (
    data_panels, main_rows, membership_gap, section_rows, with_target_accuracy,
)

MAX_NAMED = 20
"""The note on models without a purpose names at most this many."""


def purposes(ctx: Context) -> Section | None:
    frame = ctx.passed
    if frame.empty or "purpose" not in frame or frame["purpose"].nunique() < 2:
        return None
    section = Section("purpose", "Benchmark vs security models")
    section.add(Text("Benchmark models are trained for accuracy (model libraries, papers outside security); "
                     "security models come from security and privacy papers (paper §2 and §4)."))
    section.add(_unannotated_note(frame))
    _, task = section_rows(ctx, "task", "test_accuracy")
    task = _with_purpose(task)
    if len(task) and task["purpose"].nunique() > 1:
        metrics = [m for m in ("test_accuracy", "overfit_gap") if m in task]
        datas = data_panels(task)
        fig, axes = F.panels(len(datas) * len(metrics), ncols=len(metrics) * min(2, len(datas)))
        for i, (data, metric) in enumerate((d, m) for d in datas for m in metrics):
            label = F.LABELS["test_accuracy"] if metric == "test_accuracy" else F.LABELS["gap_train_test"]
            F.strip_by_category(axes[i], task[task["data"] == data], "purpose", metric, order=("benchmark", "security"),
                                xlabel="model purpose", ylabel=label, title=data, identify="model")
        section.add(ctx.figure(fig, "purpose-task", "Target accuracy and overfitting gap by model purpose",
                               "Test accuracy and overfitting gap of benchmark and security models per dataset "
                               "(paper Fig. 2 and 3)."))
    stealing_spec, stealing = section_rows(ctx, "stealing", "attack_accuracy")
    stealing, stealing_setting = main_rows(stealing_spec, with_target_accuracy(stealing, ctx))
    stealing = _with_purpose(stealing)
    if len(stealing) and stealing["purpose"].nunique() > 1:
        fig, axes = F.panels(2, panel=(5.0, 4.0))
        for ax, (x, y, name) in zip(axes, (("attack_accuracy", "agreement", "agreement vs attack accuracy"),
                                           ("target_accuracy", "attack_accuracy", "attack vs target accuracy"))):
            if x in stealing and y in stealing:
                groups = F.scatter_groups(ax, stealing, x, y, "purpose", title=name, xlabel=F.LABELS[x],
                                          ylabel=F.LABELS[y])
                for group, corr in groups.items():
                    ctx.note_correlation("purpose-stealing", x, y, group, corr)
        section.add(ctx.figure(fig, "purpose-stealing", f"Model stealing by model purpose ({stealing_setting})",
                               "Agreement vs attack accuracy (paper Fig. 8) and attack vs target accuracy "
                               "(Fig. 9), coloured by purpose, r per purpose where 3 or more models differ."))
    mia_spec, mia = section_rows(ctx, "membership", "auc")
    mia = _with_purpose(mia)
    if len(mia):
        mia, attack = main_rows(mia_spec, mia)
        mia, gap_label, _ = membership_gap(mia, ctx)
        if mia["purpose"].nunique() > 1 and mia["gap"].notna().any():
            fig, axes = F.panels(1, panel=(5.2, 4.0))
            groups = F.scatter_groups(axes[0], mia, "gap", "auc", "purpose", title=attack,
                                      xlabel=F.LABELS[gap_label], ylabel=F.LABELS["auc"])
            for group, corr in groups.items():
                ctx.note_correlation("purpose-mia", "gap", "auc", group, corr)
            section.add(ctx.figure(fig, "purpose-mia", f"Membership inference ({attack}) by model purpose",
                                   "AUC against the overfitting gap, coloured by purpose (paper Fig. 15)."))
    return section if section.has_content else None


def _with_purpose(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of models that have a purpose: an empty one is no third group to compare."""
    return rows[rows["purpose"].notna()] if len(rows) else rows


def _unannotated_note(frame: pd.DataFrame) -> Text | None:
    """Which models the comparison leaves out for want of a `purpose` annotation."""
    models = sorted(frame.loc[frame["purpose"].isna(), "model"].astype(str).unique())
    if not models:
        return None
    named = ", ".join(models[:MAX_NAMED]) + (f" and {len(models) - MAX_NAMED} more" if len(models) > MAX_NAMED else "")
    return Text(f"Left out of this comparison: {len(models)} model(s) without a `purpose` annotation in the "
                f"catalog or results file ({named}).")
