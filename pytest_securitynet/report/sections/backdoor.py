"""The backdoor detection section (paper §4.3): Table 1, each model's verdict, runtimes, and the
Neural Cleanse anomaly indices and reversed triggers. Table 1 is `results.tables.false_positive_rates`,
the function the benchmark's command line prints; detectors are ordered by the benchmark's spec."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from pytest_securitynet.report import figures as F
from pytest_securitynet.report.blocks import Context, Gallery, Section, Text, format_value
from pytest_securitynet.report.frames import CI_HIGH, CI_LOW, benchmark_rows
from pytest_securitynet.results.intervals import Bootstrap
from pytest_securitynet.results.spec import BenchmarkSpec
from pytest_securitynet.results.tables import false_positive_rates


def backdoor_detection(ctx: Context, spec: BenchmarkSpec) -> Section | None:
    """Table 1 (false-positive rate per dataset family and detector), verdicts, runtimes, triggers (Fig. 18)."""
    frame = benchmark_rows(ctx.passed, spec.id)
    if frame.empty or "flagged" not in frame:
        return None
    frame = frame[frame["flagged"].notna()].copy()
    if frame.empty:
        return None
    frame["flagged"] = frame["flagged"].astype(bool)
    frame["detector"] = frame["detector"] if "detector" in frame else frame["setting"]
    frame["runtime_s"] = pd.to_numeric(frame.get("runtime_s"), errors="coerce")
    section = Section("backdoor-detection", spec.title)
    section.add(Text("The models are presumed clean, so every model a detector flags is a false positive "
                     "(paper §4.3, Table 1)."))
    rates = false_positive_rates(ctx.result_set.passed, benchmark=spec.id)
    table = pd.DataFrame([{"data": family, "detector": detector, **cell}
                          for family, cells in rates.items() for detector, cell in cells.items()])
    detectors = spec.order(table["detector"])
    display = []
    for detector in detectors:
        line = {"detector": detector}
        for rec in table[table["detector"] == detector].itertuples():
            ci = Bootstrap().proportion(rec.flagged, rec.models)  # over the models: a binomial resample
            line[f"{rec.data} FPR"] = (f"{rec.false_positive_rate:.1%} ({rec.flagged}/{rec.models}; "
                                       f"95% CI {ci.low:.0%}-{ci.high:.0%})")
        line["mean runtime (s)"] = format_value(float(frame.loc[frame["detector"] == detector, "runtime_s"].mean()))
        display.append(line)
    section.add(ctx.table("backdoor-false-positives", "False-positive rate per dataset and detector (with a "
                          "bootstrap 95% interval over the models), and mean runtime (paper Table 1).", table,
                          pd.DataFrame(display)))
    columns = [c for c in ("model", "data", "detector", "score_name", "score", "score" + CI_LOW, "score" + CI_HIGH,
                           "threshold", "flagged", "suspect_label", "runtime_s") if c in frame]
    section.add(ctx.table("backdoor-models", "Each model's score, threshold and verdict per detector.",
                          frame[columns].sort_values(["detector", "model"])))
    nc = frame[frame["detector"] == "neural-cleanse"]
    n_panels = 1 + (not nc.empty and "anomaly_index" in nc)
    fig, axes = F.panels(n_panels, panel=(5.0, 3.6))
    F.strip_by_category(axes[0], frame, "detector", "runtime_s", order=detectors, xlabel="detector",
                        ylabel=F.LABELS["runtime_s"], title="runtime per model", log=True,
                        identify="model")
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
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
    ax.margins(y=0.12)  # the threshold line and the tallest bar clear the top edge
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
