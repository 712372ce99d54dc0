"""The evasion section (paper Appendix C): accuracy drop under each L-inf attack against the
target's clean accuracy, and against eps. A setting is `<attack>-eps<eps>`; the attacks are
ordered as the benchmark's spec lists their settings."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pytest_securitynet.report import figures as F
from pytest_securitynet.report.blocks import Context, Section, Text
from pytest_securitynet.report.frames import benchmark_rows
from pytest_securitynet.report.sections.common import MAX_MODEL_LEGEND, data_group, ordered
from pytest_securitynet.results.spec import BenchmarkSpec

PAPER_FIGURE = {"fgsm-whitebox": " (paper Fig. 20)", "fgsm-transfer": " (paper Fig. 21)"}


def attack_of(setting: str) -> str:
    """`fgsm-transfer-eps0.03` -> `fgsm-transfer`."""
    return setting.rsplit("-eps", 1)[0] if "-eps" in setting else setting


def evasion(ctx: Context, spec: BenchmarkSpec) -> Section | None:
    """Accuracy drop against clean accuracy per attack and eps (paper Fig. 20, 21), and against eps."""
    frame = benchmark_rows(ctx.passed, spec.id, "accuracy_drop", "eps")
    if frame.empty:
        return None
    frame = frame.assign(attack_id=[attack_of(s) for s in frame["setting"]])
    if "clean_accuracy" in frame:
        frame["clean_accuracy"] = pd.to_numeric(frame["clean_accuracy"], errors="coerce")
    section = Section("evasion", spec.title)
    section.add(Text("Accuracy drop (clean minus adversarial accuracy on the test set) under L-inf attacks: FGSM "
                     "white-box and by transfer from an auxiliary ResNet-18 (the paper's Appendix C), and PGD."))
    attacks = ordered(frame["attack_id"], [attack_of(s) for s in spec.settings])
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
            groups = F.scatter_groups(ax, sub, "clean_accuracy", "accuracy_drop", data_group(sub), title=f"eps = {eps:g}",
                                      xlabel=F.LABELS["clean_accuracy"], ylabel=F.LABELS["accuracy_drop"])
            for name, corr in groups.items():
                ctx.note_correlation(f"evasion-{attack}", "clean_accuracy", "accuracy_drop", f"{name} / eps {eps:g}", corr)
        section.add(ctx.figure(fig, f"evasion-{attack}", f"Evasion ({attack}): accuracy drop vs target accuracy",
                               f"Accuracy drop under `{attack}` against the target's clean accuracy, one panel per "
                               f"eps{PAPER_FIGURE.get(attack, '')}."))
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

