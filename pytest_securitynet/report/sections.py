"""The report's sections, each reproducing one of the SecurityNet paper's analyses from whatever
the results hold. A section builder returns None when its data is absent, so the page has no
empty sections; inside a section, each figure or table is made only when its data exists.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from pytest_securitynet.report import figures as F
from pytest_securitynet.report.blocks import Context, Gallery, Section, Text, format_value
from pytest_securitynet.report.frames import benchmark_rows, numeric_metrics

TASK = "task_performance.accuracy"
STEALING = "model_stealing.model_stealing"
MIA = "membership_inference.membership_inference"
EVASION = "evasion.accuracy_drop"
BACKDOOR = "backdoor_detection.detection"

SHORT = {TASK: "task", STEALING: "stealing", MIA: "membership", EVASION: "evasion", BACKDOOR: "backdoor"}
HEADLINE = {
    TASK: ("test_accuracy", "train_accuracy", "overfit_gap"),
    STEALING: ("attack_accuracy", "agreement"),
    MIA: ("auc", "tpr_at_fpr_1e-2"),
    EVASION: ("accuracy_drop",),
    BACKDOOR: ("flagged", "score", "runtime_s"),
}
"""Metrics summarised per dataset; other benchmarks contribute their numeric metrics."""
STEALING_DEFAULT = "budget50"
STEALING_ORDER = ("budget10", "budget25", "budget50", "ood", "wrn50_2", "label-only")
MIA_ORDER = ("correctness", "confidence-global", "confidence-classwise", "entropy-global", "entropy-classwise",
             "mentropy-global", "mentropy-classwise", "loss", "mlp-full", "mlp-top3")
MIA_MAIN = "mentropy-global"
"""The attack the paper uses for its benchmark-vs-security and metadata figures (modified entropy)."""
EVASION_ORDER = ("fgsm-whitebox", "fgsm-transfer", "pgd10", "pgd50")
EVASION_FIGURE = {"fgsm-whitebox": " (paper Fig. 20)", "fgsm-transfer": " (paper Fig. 21)"}
MAX_MODEL_LEGEND = 10
PER_MODEL_SHOWN = ("test_accuracy", "overfit_gap", "stealing budget50 attack_accuracy", "stealing budget50 agreement",
                   "membership mentropy-global auc", "membership mlp-top3 auc",
                   "evasion fgsm-whitebox-eps0.03 accuracy_drop",
                   "evasion fgsm-transfer-eps0.03 accuracy_drop", "backdoor neural-cleanse flagged")
"""Columns of the per-model table shown on the page (where present)."""
OTHER_METRICS_MAX = 6


def ordered(values: Iterable[str], order: Sequence[str]) -> list[str]:
    values = list(dict.fromkeys(str(v) for v in values))
    return [v for v in order if v in values] + sorted(v for v in values if v not in order)


def describe(values: Iterable[float]) -> dict[str, float]:
    v = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").dropna().astype(float)
    return {"n": int(len(v)), "mean": v.mean() if len(v) else np.nan, "std": v.std(ddof=1) if len(v) > 1 else np.nan,
            "min": v.min() if len(v) else np.nan, "max": v.max() if len(v) else np.nan}


def mean_spread(values: Iterable[float]) -> str:
    d = describe(values)
    if d["n"] == 0:
        return ""
    spread = f" ± {d['std']:.3f}" if d["n"] > 1 else ""
    return f"{d['mean']:.3f}{spread} (n = {d['n']})"


def _data_panels(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["data"].astype(str).unique())


def _group(frame: pd.DataFrame) -> str | None:
    return "data" if frame["data"].nunique() > 1 else None


# --- overview -------------------------------------------------------------------------------------

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
    table["message"] = [_clip(m) for m in table["message"]]
    section.add(ctx.table("not-passed", "Rows that did not pass, with the short reason.",
                          table.sort_values(["outcome", "benchmark", "model", "setting"])))
    return section


def _clip(text, limit: int = 200) -> str:
    text = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- per dataset ----------------------------------------------------------------------------------

def per_dataset(ctx: Context) -> Section | None:
    frame = ctx.passed
    if frame.empty:
        return None
    section = Section("datasets", "Per dataset")
    section.add(Text("Data are named by the model's dataset, with `-> copy` when the models were evaluated on a "
                     "catalogued copy of it. Cells give mean ± standard deviation over models (n = models)."))
    task = benchmark_rows(frame, TASK, "test_accuracy")
    rows = []
    for data, part in frame.groupby("data"):
        row = {"data": data, "models": part["model"].nunique(), "passed rows": len(part)}
        t = task[task["data"] == data]
        if len(t):
            row["target test accuracy"] = mean_spread(t["test_accuracy"])
            if "overfit_gap" in t:
                row["overfitting gap (train - test)"] = mean_spread(t["overfit_gap"])
        rows.append(row)
    summary = pd.DataFrame(rows)
    section.add(ctx.table("datasets", "Models, target accuracy and overfitting gap per dataset.", summary))

    long = _metric_summary(frame)
    if len(long):
        display = long.assign(cell=[_cell(r) for r in long.itertuples()])
        display = display.pivot_table(index=["benchmark", "setting", "metric"], columns="data", values="cell",
                                      aggfunc="first").reset_index()
        display.columns.name = None
        display["benchmark"] = display["benchmark"].map(lambda b: SHORT.get(b, b))
        section.add(ctx.table("attack-metrics-per-dataset",
                              "Every benchmark's headline metrics per dataset: mean ± spread (n). `flagged` is "
                              "the fraction of models a detector flagged.", long, display))
    wide = _per_model(frame)
    if len(wide):
        shown = [c for c in PER_MODEL_SHOWN if c in wide]
        display = wide[["model", "data", "purpose", *shown]] if len(shown) >= 2 else wide
        section.add(ctx.table("per-model", "One line per model with headline metrics (the CSV has every benchmark "
                              "and setting).", wide, display))
    return section


def _cell(row) -> str:
    spread = f" ± {row.std:.3f}" if row.n > 1 else ""
    return f"{row.mean:.3f}{spread} ({row.n})"


def _headline(frame: pd.DataFrame, benchmark: str) -> list[str]:
    part = frame[frame["benchmark"] == benchmark].dropna(axis=1, how="all")
    if benchmark in HEADLINE:
        return [m for m in HEADLINE[benchmark] if m in part.columns]
    return [m for m in numeric_metrics(part) if not m.startswith("n_") and not m.endswith("_s")][:OTHER_METRICS_MAX]


def _metric_summary(frame: pd.DataFrame) -> pd.DataFrame:
    records = []
    for benchmark in ordered(frame["benchmark"], list(HEADLINE)):
        part = frame[frame["benchmark"] == benchmark]
        for metric in _headline(frame, benchmark):
            for (data, setting), group in part.groupby(["data", "setting"]):
                values = pd.to_numeric(group[metric].map(lambda v: float(v) if isinstance(v, bool) else v),
                                       errors="coerce").dropna()
                if len(values):
                    records.append({"data": data, "benchmark": benchmark, "setting": setting, "metric": metric,
                                    **describe(values)})
    return pd.DataFrame(records)


def _per_model(frame: pd.DataFrame) -> pd.DataFrame:
    records: dict[tuple[str, str], dict] = {}
    headline = {b: _headline(frame, b) for b in frame["benchmark"].unique()}
    for row in frame.to_dict("records"):
        record = records.setdefault((row["model"], row["data"]), {"model": row["model"], "data": row["data"],
                                                                  "purpose": row.get("purpose")})
        for metric in headline[row["benchmark"]]:
            value = row.get(metric)
            if value is not None and not (isinstance(value, float) and np.isnan(value)):
                name = SHORT.get(row["benchmark"], row["benchmark"])
                column = metric if row["benchmark"] == TASK else f"{name} {row['setting']} {metric}"
                record[column] = value
    wide = pd.DataFrame(list(records.values()))
    first = ["model", "data", "purpose", *(m for m in HEADLINE[TASK] if m in wide)]
    return wide[first + [c for c in wide.columns if c not in first]]


# --- model stealing -------------------------------------------------------------------------------

def model_stealing(ctx: Context) -> Section | None:
    frame = with_target_accuracy(benchmark_rows(ctx.passed, STEALING, "attack_accuracy"), ctx.passed)
    if frame.empty:
        return None
    section = Section("model-stealing", "Model stealing")
    default = STEALING_DEFAULT if (frame["setting"] == STEALING_DEFAULT).any() else frame["setting"].mode().iloc[0]
    base = frame[frame["setting"] == default]
    paper_default = " (the paper default: ResNet-18 surrogate, 50% of the training split as queries)"
    section.add(Text(f"Knockoff-style stealing: a surrogate is trained on the target's answers to the attacker's "
                     f"queries. The correlations use the `{default}` setting"
                     f"{paper_default if default == STEALING_DEFAULT else ''}; "
                     "target accuracy is the target's own accuracy on the same test images."))
    if base["target_accuracy"].notna().any():
        datas = _data_panels(base)
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
                               "with Pearson's r (paper Fig. 5)."))
        table = pd.DataFrame(records)
        section.add(ctx.table("stealing-accuracy-vs-target",
                              "Pearson correlation of attack accuracy with target accuracy per dataset; the ratio is "
                              "mean attack accuracy / mean target accuracy.", table))
    if "agreement" in base and base["agreement"].notna().sum() >= 1:
        fig, axes = F.panels(1, panel=(5.2, 4.2))
        groups = F.scatter_groups(axes[0], base, "attack_accuracy", "agreement", _group(base),
                                  title="all models", xlabel=F.LABELS["attack_accuracy"], ylabel=F.LABELS["agreement"],
                                  diagonal=True)
        for name, corr in groups.items():
            ctx.note_correlation("stealing-agreement-vs-accuracy", "attack_accuracy", "agreement", name, corr,
                                 setting=default)
        section.add(ctx.figure(fig, "stealing-agreement-vs-accuracy",
                               f"Model stealing: agreement vs attack accuracy ({default})",
                               "Agreement of surrogate and target against the surrogate's accuracy (paper Fig. 4); "
                               "the dashed line is y = x."))
    settings = ordered(frame["setting"], STEALING_ORDER)
    if len(settings) > 1:
        table = _stealing_settings(frame, settings, default)
        section.add(Text("Settings other than the default change one thing each: the query budget (`budget10`, "
                         "`budget25`), out-of-distribution queries (`ood`), a larger surrogate (`wrn50_2`) or "
                         "label-only answers (`label-only`). The change is paired by model against "
                         f"`{default}`."))
        section.add(ctx.table("stealing-settings", "Attack accuracy and agreement per setting and dataset.", table))
        datas = _data_panels(frame)
        fig, axes = F.panels(len(datas))
        for ax, data in zip(axes, datas):
            F.strip_by_category(ax, frame[frame["data"] == data], "setting", "attack_accuracy", order=settings,
                                xlabel="stealing setting", ylabel=F.LABELS["attack_accuracy"], title=data,
                                connect="model")
        section.add(ctx.figure(fig, "stealing-settings", "Model stealing: attack accuracy per setting",
                               "Attack accuracy of each setting; grey lines join the settings of one target model "
                               "(effect of budget, surrogate, out-of-distribution queries, label-only answers)."))
        if frame["target_accuracy"].notna().any():
            fig, axes = F.panels(len(datas))
            for ax, data in zip(axes, datas):
                part = frame[frame["data"] == data]
                groups = F.scatter_groups(ax, part, "target_accuracy", "attack_accuracy", "setting", title=data,
                                          xlabel=F.LABELS["target_accuracy"], ylabel=F.LABELS["attack_accuracy"],
                                          label_col=None)
                for name, corr in groups.items():
                    ctx.note_correlation("stealing-settings-vs-target", "target_accuracy", "attack_accuracy",
                                         f"{data} / {name}", corr)
            section.add(ctx.figure(fig, "stealing-settings-vs-target",
                                   "Model stealing: attack accuracy vs target accuracy per setting",
                                   "As Fig. 5, one colour per setting: out-of-distribution queries (paper Fig. 6), "
                                   "WRN-50-2 surrogate (Fig. 7), query budgets (Fig. 19); r per setting in the legend."))
    return section


def with_target_accuracy(stealing: pd.DataFrame, passed: pd.DataFrame) -> pd.DataFrame:
    """Stealing rows with a `target_accuracy` column: the row's own, else the task benchmark's test accuracy."""
    if stealing.empty:
        return stealing
    out = stealing.copy()
    if "target_accuracy" not in out:
        out["target_accuracy"] = np.nan
    out["target_accuracy"] = pd.to_numeric(out["target_accuracy"], errors="coerce")
    task = benchmark_rows(passed, TASK, "test_accuracy")
    if len(task):
        lookup = task.set_index(["model", "data"])["test_accuracy"]
        fill = [lookup.get((m, d), np.nan) for m, d in zip(out["model"], out["data"])]
        out["target_accuracy"] = out["target_accuracy"].fillna(pd.Series(fill, index=out.index))
    return out


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


# --- membership inference -------------------------------------------------------------------------

def membership_gap(mia: pd.DataFrame, passed: pd.DataFrame) -> tuple[pd.DataFrame, str, str]:
    """MIA rows with a `gap` column and how it was measured.

    The paper's overfitting level is train minus test accuracy (the task benchmark's `overfit_gap`);
    it is used when every model has it, else each row's own members-minus-non-members gap.
    """
    task = benchmark_rows(passed, TASK, "overfit_gap")
    lookup = task.set_index(["model", "data"])["overfit_gap"] if len(task) else pd.Series(dtype=float)
    keys = list(zip(mia["model"], mia["data"]))
    if len(task) and all(k in lookup.index for k in keys):
        return mia.assign(gap=[float(lookup[k]) for k in keys]), "gap_train_test", \
            "the task benchmark's train minus test accuracy"
    return mia.assign(gap=pd.to_numeric(mia.get("overfit_gap"), errors="coerce")), "gap_members", \
        "accuracy on the attacker's members minus its non-members (the task benchmark is missing for some models)"


def membership_inference(ctx: Context) -> Section | None:
    mia = benchmark_rows(ctx.passed, MIA, "auc")
    if mia.empty:
        return None
    mia, gap_label, gap_text = membership_gap(mia, ctx.passed)
    section = Section("membership-inference", "Membership inference")
    section.add(Text(f"AUC of each attack against the model's overfitting gap, here {gap_text}."))
    attacks = ordered(mia["setting"], MIA_ORDER)
    if mia["gap"].notna().any():
        fig, axes = F.panels(len(attacks), ncols=min(4, len(attacks)))
        records = []
        for ax, attack in zip(axes, attacks):
            part = mia[mia["setting"] == attack]
            groups = F.scatter_groups(ax, part, "gap", "auc", _group(part), title=attack,
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
                               "dataset (paper Fig. 13)."))
        section.add(ctx.table("mia-auc-vs-gap", "AUC per attack and dataset, and its correlation with the gap.",
                              pd.DataFrame(records)))
    if {"mlp-full", "mlp-top3"} <= set(attacks):
        section.add(Text("Full posterior vs top-3 posteriors as the MLP's input (the paper finds top-3 much better "
                         "on 1,000-class ImageNet models, and about equal with few classes)."))
        shown = [a for a in ("mlp-full", "mlp-top3", MIA_MAIN) if a in attacks]
        datas = _data_panels(mia)
        if mia["gap"].notna().any():
            fig, axes = F.panels(len(datas))
            for ax, data in zip(axes, datas):
                part = mia[(mia["data"] == data) & mia["setting"].isin(shown)]
                F.scatter_groups(ax, part, "gap", "auc", "setting", title=data, xlabel=F.LABELS[gap_label],
                                 ylabel=F.LABELS["auc"], label_col=None)
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
        table["attack"] = pd.Categorical(table["attack"], ordered(table["attack"], MIA_ORDER), ordered=True)
        table = table.sort_values(["data", "attack"]).reset_index(drop=True)
        table["attack"] = table["attack"].astype(str)
        section.add(ctx.table("mia-tpr-low-fpr", "True-positive rate at 1% and 0.1% false-positive rate per attack "
                              "(a signal-free attack gets TPR = FPR).", table))
        datas = _data_panels(mia)
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


# --- evasion --------------------------------------------------------------------------------------

def evasion(ctx: Context) -> Section | None:
    frame = benchmark_rows(ctx.passed, EVASION, "accuracy_drop", "eps")
    if frame.empty:
        return None
    frame = frame.assign(attack_id=[s.rsplit("-eps", 1)[0] if "-eps" in s else s for s in frame["setting"]])
    if "clean_accuracy" in frame:
        frame["clean_accuracy"] = pd.to_numeric(frame["clean_accuracy"], errors="coerce")
    section = Section("evasion", "Evasion")
    section.add(Text("Accuracy drop (clean minus adversarial accuracy on the test set) under L-inf attacks: FGSM "
                     "white-box and by transfer from an auxiliary ResNet-18 (the paper's Appendix C), and PGD."))
    attacks = ordered(frame["attack_id"], EVASION_ORDER)
    records = []
    for attack in attacks:
        part = frame[frame["attack_id"] == attack]
        eps_values = sorted(part["eps"].unique())
        for eps in eps_values:
            for data, sub in part[part["eps"] == eps].groupby("data"):
                corr = F.pearson(sub.get("clean_accuracy", pd.Series(dtype=float)), sub["accuracy_drop"])
                records.append({"data": data, "attack": attack, "eps": eps, "n": len(sub),
                                "mean_accuracy_drop": sub["accuracy_drop"].mean(),
                                "std_accuracy_drop": sub["accuracy_drop"].std(ddof=1) if len(sub) > 1 else np.nan,
                                "mean_clean_accuracy": sub["clean_accuracy"].mean() if "clean_accuracy" in sub else np.nan,
                                "pearson_r_drop_vs_clean": corr.r, "p_value": corr.p})
        if "clean_accuracy" not in part or part["clean_accuracy"].isna().all():
            continue
        fig, axes = F.panels(len(eps_values))
        for ax, eps in zip(axes, eps_values):
            sub = part[part["eps"] == eps]
            groups = F.scatter_groups(ax, sub, "clean_accuracy", "accuracy_drop", _group(sub), title=f"eps = {eps:g}",
                                      xlabel=F.LABELS["clean_accuracy"], ylabel=F.LABELS["accuracy_drop"])
            for name, corr in groups.items():
                ctx.note_correlation(f"evasion-{attack}", "clean_accuracy", "accuracy_drop", f"{name} / eps {eps:g}", corr)
        section.add(ctx.figure(fig, f"evasion-{attack}", f"Evasion ({attack}): accuracy drop vs target accuracy",
                               f"Accuracy drop under `{attack}` against the target's clean accuracy, one panel per "
                               f"eps{EVASION_FIGURE.get(attack, '')}."))
    section.add(ctx.table("evasion", "Accuracy drop per dataset, attack and eps, and its correlation with the clean "
                          "accuracy.", pd.DataFrame(records)))
    if frame["eps"].nunique() > 1:
        fig, axes = F.panels(len(attacks), ncols=min(4, len(attacks)))
        for ax, attack in zip(axes, attacks):
            part = frame[frame["attack_id"] == attack]
            F.lines_by(ax, part, "eps", "accuracy_drop", "model", xlabel=F.LABELS["eps"],
                       ylabel=F.LABELS["accuracy_drop"], title=attack,
                       legend=part["model"].nunique() <= MAX_MODEL_LEGEND)
        section.add(ctx.figure(fig, "evasion-drop-vs-eps", "Evasion: accuracy drop vs eps",
                               "Accuracy drop against eps, one line per model, one panel per attack."))
    return section


# --- backdoor detection ---------------------------------------------------------------------------

def backdoor_detection(ctx: Context) -> Section | None:
    frame = benchmark_rows(ctx.passed, BACKDOOR)
    if frame.empty or "flagged" not in frame:
        return None
    frame = frame[frame["flagged"].notna()].copy()
    if frame.empty:
        return None
    frame["flagged"] = frame["flagged"].astype(bool)
    frame["family"] = frame["dataset_family"] if "dataset_family" in frame else frame["data"]
    frame["detector"] = frame["detector"] if "detector" in frame else frame["setting"]
    frame["runtime_s"] = pd.to_numeric(frame.get("runtime_s"), errors="coerce")
    section = Section("backdoor-detection", "Backdoor detection")
    section.add(Text("The models are presumed clean, so every model a detector flags is a false positive "
                     "(paper §4.3, Table 1)."))
    records = []
    for (family, detector), part in frame.groupby(["family", "detector"]):
        records.append({"data": family, "detector": detector, "models": len(part), "flagged": int(part["flagged"].sum()),
                        "false_positive_rate": part["flagged"].mean(), "mean_runtime_s": part["runtime_s"].mean(),
                        "median_runtime_s": part["runtime_s"].median()})
    table = pd.DataFrame(records)
    detectors = ordered(table["detector"], ("neural-cleanse", "strip", "neo"))
    display = []
    for detector in detectors:
        line = {"detector": detector}
        for rec in table[table["detector"] == detector].itertuples():
            line[f"{rec.data} FPR"] = f"{rec.false_positive_rate:.1%} ({rec.flagged}/{rec.models})"
        line["mean runtime (s)"] = format_value(float(frame.loc[frame["detector"] == detector, "runtime_s"].mean()))
        display.append(line)
    section.add(ctx.table("backdoor-false-positives", "False-positive rate per dataset and detector, with mean "
                          "runtime (paper Table 1).", table, pd.DataFrame(display)))
    columns = [c for c in ("model", "data", "detector", "score_name", "score", "threshold", "flagged", "suspect_label",
                           "runtime_s") if c in frame]
    section.add(ctx.table("backdoor-models", "Each model's score, threshold and verdict per detector.",
                          frame[columns].sort_values(["detector", "model"])))
    nc = frame[frame["detector"] == "neural-cleanse"]
    n_panels = 1 + (not nc.empty and "anomaly_index" in nc)
    fig, axes = F.panels(n_panels, panel=(5.0, 3.6))
    F.strip_by_category(axes[0], frame, "detector", "runtime_s", order=detectors, xlabel="detector",
                        ylabel=F.LABELS["runtime_s"], title="runtime per model", log=True)
    if n_panels == 2:
        _anomaly_bars(axes[1], nc)
    section.add(ctx.figure(fig, "backdoor-detection", "Backdoor detection: runtime and Neural Cleanse anomaly index",
                           "Runtime of each detector per model, and the Neural Cleanse anomaly index of the most "
                           "suspicious label per model against its threshold."))
    gallery = _trigger_gallery(ctx, nc)
    if gallery is not None:
        section.add(gallery)
    return section


def _anomaly_bars(ax, nc: pd.DataFrame) -> None:
    nc = nc.sort_values("model")
    values = pd.to_numeric(nc["anomaly_index"], errors="coerce").to_numpy()
    colors = ["tab:red" if f else "tab:blue" for f in nc["flagged"]]
    ax.bar(range(len(nc)), values, color=colors)
    threshold = pd.to_numeric(nc.get("threshold"), errors="coerce").dropna()
    if len(threshold):
        ax.axhline(float(threshold.iloc[0]), color="black", linestyle="--", linewidth=0.8,
                   label=f"threshold {float(threshold.iloc[0]):g}")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(nc)))
    ax.set_xticklabels(nc["model"], rotation=35, ha="right", fontsize=6)
    ax.set_xlabel("model (red: flagged)", fontsize=8)
    ax.set_ylabel(F.LABELS["anomaly_index"], fontsize=8)
    ax.set_title("Neural Cleanse anomaly index", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    ax.tick_params(axis="y", labelsize=7)


def _trigger_gallery(ctx: Context, nc: pd.DataFrame) -> Gallery | None:
    if nc.empty or "trigger_png" not in nc:
        return None
    images, missing = [], []
    for row in nc.sort_values("model").to_dict("records"):
        name = row.get("trigger_png")
        if not isinstance(name, str) or not name:
            continue
        source = Path(name) if Path(name).is_absolute() else Path(row["file"]).parent / name
        if not source.is_file():
            missing.append(str(source))
            continue
        target = f"triggers/{row['model']}-label{_label(row.get('trigger_label'))}.png"
        (ctx.out / "triggers").mkdir(exist_ok=True)
        shutil.copyfile(source, ctx.out / target)
        ctx.files.append(target)
        verdict = "flagged" if row["flagged"] else "not flagged"
        images.append((target, f"{row['model']}: label {_label(row.get('trigger_label'))}, anomaly index "
                               f"{format_value(row.get('anomaly_index'))}, {verdict}"))
    if not images and not missing:
        return None
    caption = ("Neural Cleanse's reversed trigger (mask and pattern) of the flagged label, else of the label with "
               "the smallest mask, per model (paper Fig. 18).")
    if missing:
        caption += f" {len(missing)} saved trigger image(s) were not found beside the results: {', '.join(missing[:3])}."
    return Gallery(caption=caption, images=images)


def _label(value) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "?"


# --- benchmark vs security models -------------------------------------------------------------------

def purposes(ctx: Context) -> Section | None:
    frame = ctx.passed
    if frame.empty or "purpose" not in frame or frame["purpose"].nunique() < 2:
        return None
    section = Section("purpose", "Benchmark vs security models")
    section.add(Text("Benchmark models are trained for accuracy (model libraries, papers outside security); "
                     "security models come from security and privacy papers (paper §2 and §4)."))
    task = benchmark_rows(frame, TASK, "test_accuracy")
    if len(task) and task["purpose"].nunique() > 1:
        metrics = [m for m in ("test_accuracy", "overfit_gap") if m in task]
        datas = _data_panels(task)
        fig, axes = F.panels(len(datas) * len(metrics), ncols=len(metrics) * min(2, len(datas)))
        for i, (data, metric) in enumerate((d, m) for d in datas for m in metrics):
            label = F.LABELS["test_accuracy"] if metric == "test_accuracy" else F.LABELS["gap_train_test"]
            F.strip_by_category(axes[i], task[task["data"] == data], "purpose", metric, order=("benchmark", "security"),
                                xlabel="model purpose", ylabel=label, title=data)
        section.add(ctx.figure(fig, "purpose-task", "Target accuracy and overfitting gap by model purpose",
                               "Test accuracy and overfitting gap of benchmark and security models per dataset "
                               "(paper Fig. 2 and 3)."))
    stealing = with_target_accuracy(benchmark_rows(frame, STEALING, "attack_accuracy"), frame)
    stealing = stealing[stealing["setting"] == STEALING_DEFAULT] if len(stealing) else stealing
    if len(stealing) and stealing["purpose"].nunique() > 1:
        fig, axes = F.panels(2, panel=(5.0, 4.0))
        for ax, (x, y, name) in zip(axes, (("attack_accuracy", "agreement", "agreement vs attack accuracy"),
                                           ("target_accuracy", "attack_accuracy", "attack vs target accuracy"))):
            if x in stealing and y in stealing:
                groups = F.scatter_groups(ax, stealing, x, y, "purpose", title=name, xlabel=F.LABELS[x],
                                          ylabel=F.LABELS[y], label_col=None)
                for group, corr in groups.items():
                    ctx.note_correlation("purpose-stealing", x, y, group, corr)
        section.add(ctx.figure(fig, "purpose-stealing", f"Model stealing by model purpose ({STEALING_DEFAULT})",
                               "Agreement vs attack accuracy (paper Fig. 8) and attack vs target accuracy "
                               "(Fig. 9), coloured by purpose, r per purpose."))
    mia = benchmark_rows(frame, MIA, "auc")
    if len(mia):
        attack = MIA_MAIN if (mia["setting"] == MIA_MAIN).any() else ordered(mia["setting"], MIA_ORDER)[0]
        mia, gap_label, _ = membership_gap(mia[mia["setting"] == attack], frame)
        if mia["purpose"].nunique() > 1 and mia["gap"].notna().any():
            fig, axes = F.panels(1, panel=(5.2, 4.0))
            groups = F.scatter_groups(axes[0], mia, "gap", "auc", "purpose", title=attack,
                                      xlabel=F.LABELS[gap_label], ylabel=F.LABELS["auc"], label_col=None)
            for group, corr in groups.items():
                ctx.note_correlation("purpose-mia", "gap", "auc", group, corr)
            section.add(ctx.figure(fig, "purpose-mia", f"Membership inference ({attack}) by model purpose",
                                   "AUC against the overfitting gap, coloured by purpose (paper Fig. 15)."))
    return section if section.has_content else None


# --- metadata -------------------------------------------------------------------------------------

def metadata(ctx: Context) -> Section | None:
    frame = ctx.passed
    if frame.empty:
        return None
    stealing = with_target_accuracy(benchmark_rows(frame, STEALING, "attack_accuracy"), frame)
    if len(stealing):
        stealing = stealing[stealing["setting"] == STEALING_DEFAULT]
    task = benchmark_rows(frame, TASK, "test_accuracy")
    mia = benchmark_rows(frame, MIA, "auc")
    if len(mia):
        attack = MIA_MAIN if (mia["setting"] == MIA_MAIN).any() else ordered(mia["setting"], MIA_ORDER)[0]
        mia = mia[mia["setting"] == attack]
    panels = [(stealing, "attack_accuracy", f"model stealing ({STEALING_DEFAULT})"),
              (task, "test_accuracy", "target task accuracy"),
              (mia, "auc", f"membership inference ({attack})" if len(mia) else "membership inference")]
    # a comparison needs at least two different years (venue types)
    by_year = [(f, m, t) for f, m, t in panels if len(f) and "year" in f and f["year"].nunique() >= 2]
    by_venue = [(f, m, t) for f, m, t in panels[::2] if len(f) and "venue_type" in f and f["venue_type"].nunique() >= 2]
    if not by_year and not by_venue:
        return None
    section = Section("metadata", "Metadata: publication year and venue type")
    section.add(Text("Annotations from the catalog: the year the model's architecture was published and the type "
                     f"of venue. Model stealing uses `{STEALING_DEFAULT}`, membership inference its "
                     "modified-entropy attack where present."))
    if by_year:
        fig, axes = F.panels(len(by_year))
        for ax, (part, metric, title) in zip(axes, by_year):
            groups = F.scatter_groups(ax, part.dropna(subset=["year"]), "year", metric, _group(part), title=title,
                                      xlabel=F.LABELS["year"], ylabel=F.LABELS[metric])
            for group, corr in groups.items():
                ctx.note_correlation("metadata-year", "year", metric, group, corr)
        section.add(ctx.figure(fig, "metadata-year", "Attack performance and accuracy vs publication year",
                               "Stealing attack accuracy (paper Fig. 10), target accuracy (Fig. 11) and membership "
                               "inference AUC (Fig. 16) against the publication year."))
    if by_venue:
        fig, axes = F.panels(len(by_venue), panel=(5.0, 3.8))
        for ax, (part, metric, title) in zip(axes, by_venue):
            F.strip_by_category(ax, part.dropna(subset=["venue_type"]), "venue_type", metric, xlabel="venue type",
                                ylabel=F.LABELS[metric], title=title)
        section.add(ctx.figure(fig, "metadata-venue", "Attack performance by venue type",
                               "Stealing attack accuracy (paper Fig. 12) and membership inference AUC (Fig. 17) per "
                               "type of publishing venue (boxes where a venue type has 3 or more models)."))
    return section


# --- measured vs reported -------------------------------------------------------------------------

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
        label = f"{metric} ({SHORT.get(benchmark, benchmark)}, {setting})"
        corr = F.scatter_groups(ax, part, "reported", "measured", None, title=label, diagonal=True,
                                xlabel=f"reported {metric} (as published)", ylabel=f"measured {metric} (this run)")["all"]
        ctx.note_correlation("reported-vs-measured", "reported", "measured", label, corr)
    section.add(ctx.figure(fig, "reported-vs-measured", "Measured vs reported numbers",
                           "Each measured metric against the reported value for the same model, benchmark and "
                           "setting; the dashed line is y = x."))
    section.add(ctx.table("reported-vs-measured", "Measured and reported values, and their difference "
                          "(measured - reported).", both))
    return section


BUILDERS: tuple[Callable[[Context], Section | None], ...] = (
    overview, duplicates, not_passed, per_dataset, model_stealing, membership_inference, backdoor_detection,
    evasion, purposes, metadata, reported,
)
