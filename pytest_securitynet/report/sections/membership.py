"""The membership inference section (paper §4.2): each attack's AUC against the overfitting gap,
the MLP attack on full vs top-3 posteriors, and TPR at a low FPR. Attacks are ordered by the
benchmark's spec; its main setting (modified entropy) is drawn beside the MLPs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pytest_securitynet.report import figures as F
from pytest_securitynet.report.blocks import Context, Section, Text
from pytest_securitynet.report.frames import benchmark_rows
from pytest_securitynet.report.sections.common import data_group, data_panels, describe, membership_gap
from pytest_securitynet.results.spec import BenchmarkSpec


def membership_inference(ctx: Context, spec: BenchmarkSpec) -> Section | None:
    """AUC against the overfitting gap per attack (paper Fig. 13, 14) and TPR at low FPR."""
    mia = benchmark_rows(ctx.passed, spec.id, "auc")
    if mia.empty:
        return None
    mia, gap_label, gap_text = membership_gap(mia, ctx)
    section = Section("membership-inference", spec.title)
    section.add(Text(f"AUC of each attack against the model's overfitting gap, here {gap_text}."))
    attacks = spec.order(mia["setting"])
    if mia["gap"].notna().any():
        fig, axes = F.panels(len(attacks), ncols=min(4, len(attacks)))
        records = []
        for ax, attack in zip(axes, attacks):
            part = mia[mia["setting"] == attack]
            groups = F.scatter_groups(ax, part, "gap", "auc", data_group(part), title=attack,
                                      xlabel=F.LABELS[gap_label], ylabel=F.LABELS["auc"])
            for name, corr in groups.items():
                ctx.note_correlation("mia-auc-vs-gap", "gap", "auc", f"{name} / {attack}", corr)
            for data, sub in list(part.groupby("data")) + ([("all data", part)] if part["data"].nunique() > 1 else []):
                corr = F.pearson(sub["gap"], sub["auc"])
                records.append({"attack": attack, "data": data, "n": corr.n, "pearson_r": corr.r, "p_value": corr.p,
                                "mean_auc": sub["auc"].mean(), "std_auc": sub["auc"].std(ddof=1) if len(sub) > 1 else np.nan,
                                "mean_gap": sub["gap"].mean()})
        section.add(ctx.figure(fig, "mia-auc-vs-gap", "Membership inference: AUC vs overfitting gap per attack",
                               "Attack AUC against the overfitting gap, one panel per attack, Pearson's r per "
                               "dataset where 3 or more models differ (paper Fig. 13)."))
        section.add(ctx.table("mia-auc-vs-gap", "AUC per attack and dataset, and its correlation with the gap.",
                              pd.DataFrame(records)))
    if {"mlp-full", "mlp-top3"} <= set(attacks):
        section.add(Text("Full posterior vs top-3 posteriors as the MLP's input (the paper finds top-3 much better "
                         "on 1,000-class ImageNet models, and about equal with few classes)."))
        shown = [a for a in dict.fromkeys(("mlp-full", "mlp-top3", spec.main_setting)) if a in attacks]
        datas = data_panels(mia)
        if mia["gap"].notna().any():
            fig, axes = F.panels(len(datas))
            for ax, data in zip(axes, datas):
                part = mia[(mia["data"] == data) & mia["setting"].isin(shown)]
                F.scatter_groups(ax, part, "gap", "auc", "setting", title=data, xlabel=F.LABELS[gap_label],
                                 ylabel=F.LABELS["auc"])
            section.add(ctx.figure(fig, "mia-mlp-full-vs-top3", "Membership inference: MLP on full vs top-3 posteriors",
                                   "AUC against the overfitting gap for the MLP attack on the full posterior, on the "
                                   "top-3 posteriors and for modified entropy, per dataset (paper Fig. 14)."))
        records = []
        for data, part in mia.groupby("data"):
            full = part[part["setting"] == "mlp-full"].set_index("model")["auc"]
            top3 = part[part["setting"] == "mlp-top3"].set_index("model")["auc"]
            both = pd.concat([full.rename("full"), top3.rename("top3")], axis=1).dropna()
            if len(both):
                records.append({"data": data, "n_paired": len(both), "mean_auc_mlp_full": both["full"].mean(),
                                "mean_auc_mlp_top3": both["top3"].mean(),
                                "mean_top3_minus_full": (both["top3"] - both["full"]).mean()})
        if records:
            section.add(ctx.table("mia-mlp-full-vs-top3", "Mean AUC of the MLP attack on full and top-3 posteriors, "
                                  "paired by model.", pd.DataFrame(records)))
    tpr_cols = [c for c in ("tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3") if c in mia]
    if tpr_cols:
        records = []
        for (data, attack), part in mia.groupby(["data", "setting"]):
            record = {"data": data, "attack": attack, "n": len(part), "mean_auc": part["auc"].mean()}
            for col in tpr_cols:
                values = pd.to_numeric(part[col], errors="coerce")
                record[f"mean_{col}"], record[f"max_{col}"] = values.mean(), values.max()
            records.append(record)
        table = pd.DataFrame(records)
        table["attack"] = pd.Categorical(table["attack"], spec.order(table["attack"]), ordered=True)
        table = table.sort_values(["data", "attack"]).reset_index(drop=True)
        table["attack"] = table["attack"].astype(str)
        section.add(ctx.table("mia-tpr-low-fpr", "True-positive rate at 1% and 0.1% false-positive rate per attack "
                              "(a signal-free attack gets TPR = FPR).", table))
        datas = data_panels(mia)
        fig, axes = F.panels(len(datas), ncols=2, panel=(6.0, 3.6))
        for ax, data in zip(axes, datas):
            _tpr_bars(ax, mia[mia["data"] == data], attacks, tpr_cols, data)
        section.add(ctx.figure(fig, "mia-tpr-low-fpr", "Membership inference: TPR at low FPR per attack",
                               "Mean true-positive rate at 1% and 0.1% false-positive rate over models (bars, with "
                               "min-max whiskers); dotted lines mark the FPR, what guessing achieves."))
    return section


def _tpr_bars(ax, part: pd.DataFrame, attacks: list[str], cols: list[str], title: str) -> None:
    present = [a for a in attacks if (part["setting"] == a).any()]
    x = np.arange(len(present))
    width = 0.8 / len(cols)
    colors = F.color_map(cols)
    for i, col in enumerate(cols):
        stats = [describe(part.loc[part["setting"] == a, col]) for a in present]
        means = np.array([s["mean"] for s in stats])
        lo = np.maximum(means - np.array([s["min"] for s in stats]), 0)  # >= 0 despite rounding
        hi = np.maximum(np.array([s["max"] for s in stats]) - means, 0)
        fpr = float(col.rsplit("_", 1)[-1])
        ax.bar(x + (i - (len(cols) - 1) / 2) * width, means, width, yerr=[lo, hi], capsize=2,
               color=colors[col], label=f"TPR at FPR {fpr:g}")
        ax.axhline(fpr, color=colors[col], linestyle=":", linewidth=1)
    ax.set_xticks(x)
    ax.set_xticklabels(present, rotation=35, ha="right", fontsize=7)
    ax.set_xlabel("membership inference attack", fontsize=8)
    ax.set_ylabel(F.LABELS["tpr"], fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7)

