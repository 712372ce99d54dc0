"""The model stealing section (paper §4.1): surrogate accuracy and agreement against the target's
accuracy, and how each setting (budget, out-of-distribution queries, surrogate, label-only answers)
changes them. Settings are ordered, and the main one chosen, by the benchmark's spec."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pytest_securitynet.report import figures as F
from pytest_securitynet.report.blocks import Context, Section, Text
from pytest_securitynet.report.frames import benchmark_rows
from pytest_securitynet.report.sections.common import data_group, data_panels, with_target_accuracy
from pytest_securitynet.results.spec import BenchmarkSpec


def model_stealing(ctx: Context, spec: BenchmarkSpec) -> Section | None:
    """Knockoff-style stealing (paper Fig. 4-7, 19): correlations in the main setting, then every setting."""
    frame = with_target_accuracy(benchmark_rows(ctx.passed, spec.id, "attack_accuracy"), ctx)
    if frame.empty:
        return None
    section = Section("model-stealing", spec.title)
    main = spec.main_setting
    default = main if (frame["setting"] == main).any() else frame["setting"].mode().iloc[0]
    base = frame[frame["setting"] == default]
    which = " (the benchmark's main setting, the paper's default)" if default == main else ""
    section.add(Text(f"Knockoff-style stealing: a surrogate is trained on the target's answers to the attacker's "
                     f"queries. The correlations use the `{default}` setting{which}; "
                     "target accuracy is the target's own accuracy on the same test images."))
    if base["target_accuracy"].notna().any():
        datas = data_panels(base)
        fig, axes = F.panels(len(datas))
        records = []
        for ax, data in zip(axes, datas):
            part = base[base["data"] == data]
            corr = F.scatter_groups(ax, part, "target_accuracy", "attack_accuracy", None, title=data,
                                    xlabel=F.LABELS["target_accuracy"], ylabel=F.LABELS["attack_accuracy"])["all"]
            ctx.note_correlation("stealing-accuracy-vs-target", "target_accuracy", "attack_accuracy", data, corr,
                                 setting=default)
            records.append(_corr_record(data, default, corr, part["target_accuracy"], part["attack_accuracy"]))
        if len(datas) > 1:
            records.append(_corr_record("all data", default, F.pearson(base["target_accuracy"], base["attack_accuracy"]),
                                        base["target_accuracy"], base["attack_accuracy"]))
        section.add(ctx.figure(fig, "stealing-accuracy-vs-target",
                               f"Model stealing: surrogate accuracy vs target accuracy ({default})",
                               "Surrogate (attack) accuracy against the target's test accuracy, one panel per dataset, "
                               "with Pearson's r where 3 or more models differ (paper Fig. 5)."))
        table = pd.DataFrame(records)
        section.add(ctx.table("stealing-accuracy-vs-target",
                              "Pearson correlation of attack accuracy with target accuracy per dataset; the ratio is "
                              "mean attack accuracy / mean target accuracy.", table))
    if "agreement" in base and base["agreement"].notna().sum() >= 1:
        fig, axes = F.panels(1, panel=(5.2, 4.2))
        groups = F.scatter_groups(axes[0], base, "attack_accuracy", "agreement", data_group(base),
                                  title="all models", xlabel=F.LABELS["attack_accuracy"], ylabel=F.LABELS["agreement"],
                                  diagonal=True)
        for name, corr in groups.items():
            ctx.note_correlation("stealing-agreement-vs-accuracy", "attack_accuracy", "agreement", name, corr,
                                 setting=default)
        section.add(ctx.figure(fig, "stealing-agreement-vs-accuracy",
                               f"Model stealing: agreement vs attack accuracy ({default})",
                               "Agreement of surrogate and target against the surrogate's accuracy (paper Fig. 4); "
                               "the dashed line is y = x."))
    settings = spec.order(frame["setting"])
    if len(settings) > 1:
        table = _stealing_settings(frame, settings, default)
        section.add(Text("Settings other than the default change one thing each: the query budget (`budget10`, "
                         "`budget25`), out-of-distribution queries (`ood`), a larger surrogate (`wrn50_2`) or "
                         "label-only answers (`label-only`). The change is paired by model against "
                         f"`{default}`."))
        section.add(ctx.table("stealing-settings", "Attack accuracy and agreement per setting and dataset.", table))
        datas = data_panels(frame)
        fig, axes = F.panels(len(datas))
        for ax, data in zip(axes, datas):
            F.strip_by_category(ax, frame[frame["data"] == data], "setting", "attack_accuracy", order=settings,
                                xlabel="stealing setting", ylabel=F.LABELS["attack_accuracy"], title=data,
                                connect="model", identify="model")
        section.add(ctx.figure(fig, "stealing-settings", "Model stealing: attack accuracy per setting",
                               "Attack accuracy of each setting; lines join the settings of one target model "
                               "(effect of budget, surrogate, out-of-distribution queries, label-only answers)."))
        if frame["target_accuracy"].notna().any():
            fig, axes = F.panels(len(datas))
            for ax, data in zip(axes, datas):
                part = frame[frame["data"] == data]
                groups = F.scatter_groups(ax, part, "target_accuracy", "attack_accuracy", "setting", title=data,
                                          xlabel=F.LABELS["target_accuracy"], ylabel=F.LABELS["attack_accuracy"])
                for name, corr in groups.items():
                    ctx.note_correlation("stealing-settings-vs-target", "target_accuracy", "attack_accuracy",
                                         f"{data} / {name}", corr)
            section.add(ctx.figure(fig, "stealing-settings-vs-target",
                                   "Model stealing: attack accuracy vs target accuracy per setting",
                                   "As Fig. 5, one colour per setting: out-of-distribution queries (paper Fig. 6), "
                                   "WRN-50-2 surrogate (Fig. 7), query budgets (Fig. 19); r per setting in the legend "
                                   "where 3 or more models differ."))
    return section


def _corr_record(data: str, setting: str, corr: F.Corr, x: pd.Series, y: pd.Series) -> dict:
    mean_x, mean_y = float(np.nanmean(x)) if len(x) else np.nan, float(np.nanmean(y)) if len(y) else np.nan
    return {"data": data, "setting": setting, "n": corr.n, "pearson_r": corr.r, "p_value": corr.p,
            "mean_target_accuracy": mean_x, "mean_attack_accuracy": mean_y,
            "attack_to_target_ratio": mean_y / mean_x if mean_x else np.nan}


def _stealing_settings(frame: pd.DataFrame, settings: list[str], default: str) -> pd.DataFrame:
    records = []
    for data, part in frame.groupby("data"):
        base = part[part["setting"] == default].set_index("model")["attack_accuracy"]
        for setting in settings:
            group = part[part["setting"] == setting]
            if group.empty:
                continue
            paired = group.set_index("model")["attack_accuracy"].sub(base).dropna()
            records.append({
                "data": data, "setting": setting,
                "surrogate": _mode(group.get("surrogate")), "query_source": _mode(group.get("query_source")),
                "label_only": _mode(group.get("label_only")), "budget_fraction": _mode(group.get("budget_fraction")),
                "n": len(group), "mean_attack_accuracy": group["attack_accuracy"].mean(),
                "std_attack_accuracy": group["attack_accuracy"].std(ddof=1) if len(group) > 1 else np.nan,
                "mean_agreement": pd.to_numeric(group.get("agreement"), errors="coerce").mean()
                if "agreement" in group else np.nan,
                f"mean_change_vs_{default}": paired.mean() if setting != default and len(paired) else np.nan,
                "n_paired": len(paired) if setting != default else np.nan,
            })
    return pd.DataFrame(records)


def _mode(series: pd.Series | None):
    if series is None:
        return None
    values = series.dropna()
    return values.mode().iloc[0] if len(values) else None

