"""`securitynet report`: known answers on small planted results files, merging, empty sections, and
the page in headless Chromium (every image loads, no console errors)."""

from __future__ import annotations

import argparse
import csv
import html
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from PIL import Image

from pytest_securitynet.report import build_report
from pytest_securitynet.report.cli import add_report_parser, main
from pytest_securitynet.report import figures
from pytest_securitynet.report.figures import pearson, scatter_groups, strip_by_category
from pytest_securitynet.report.points import MAX_IDENTIFIED, short_ids
from pytest_securitynet.results.merge import load_and_merge
from pytest_securitynet.results.rows import SCHEMA

CHROMIUM = Path("/usr/bin/chromium")
DPI = 60
"""Low-resolution figures keep the tests fast; the resolution changes nothing else."""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TARGET_ACCURACY = [0.70, 0.75, 0.80, 0.85, 0.90, 0.95]
GAPS = [0.01, 0.03, 0.05, 0.08, 0.12, 0.20]


# --- building results files ----------------------------------------------------------------------

def model_info(i: int, dataset: str = "cifar10") -> dict:
    return {"dataset": dataset, "architecture": f"arch{i}", "model_type": "resnet", "source": "demo",
            "annotations": {"purpose": "security" if i >= 4 else "benchmark", "year": 2015 + i,
                            "venue_type": "computer vision" if i % 2 else "machine learning", "num_classes": 10}}


def row(model: str, benchmark: str, setting: str, metrics: dict, outcome: str = "passed", dataset: str = "cifar10",
        finished_at: str = "2026-01-01T00:00:00+00:00", **extra) -> dict:
    return {"model": model, "benchmark": benchmark, "setting": setting, "params": {}, "metrics": metrics,
            "dataset": dataset, "dataset_source": dataset, "device": "cpu", "seed": 0, "worker": "main",
            "nodeid": f"benchmarks/x.py::t[{model}-{setting}]", "finished_at": finished_at, "outcome": outcome,
            "wall_time_s": 0.1, "setup_time_s": 0.0, **extra}


def write_doc(path: Path, rows: list[dict], models: dict) -> Path:
    doc = {"schema": SCHEMA, "run": {"started_at": "2026-01-01T00:00:00+00:00", "finished_at": None,
                                     "status": "complete", "host": "test", "argv": ["pytest", "benchmarks"]},
           "models": models, "results": rows}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def planted_rows(n: int = 6) -> tuple[list[dict], dict]:
    """Six models whose stealing attack accuracy is exactly 0.5 * target accuracy + 0.1 and whose
    modified-entropy AUC is exactly 0.5 + overfitting gap."""
    rows, models = [], {}
    for i in range(n):
        m, t, g = f"model-{i}", TARGET_ACCURACY[i], GAPS[i]
        models[m] = model_info(i)
        rows.append(row(m, "task_performance.accuracy", "default",
                        {"train_accuracy": t + g, "test_accuracy": t, "overfit_gap": g}))
        rows.append(row(m, "model_stealing.model_stealing", "budget50",
                        {"attack_accuracy": 0.5 * t + 0.1, "agreement": 0.5 * t + 0.12, "target_accuracy": t}))
        rows.append(row(m, "membership_inference.membership_inference", "mentropy-global",
                        {"auc": 0.5 + g, "tpr_at_fpr_1e-2": 0.01 + g / 10, "tpr_at_fpr_1e-3": 0.001,
                         "overfit_gap": g}))
    return rows, models


def full_rows(json_dir: Path) -> tuple[list[dict], dict]:
    """The planted rows plus every other benchmark and setting, and a Neural Cleanse trigger PNG."""
    rows, models = planted_rows()
    art = json_dir / "results-artifacts"
    for i, m in enumerate(models):
        t, g = TARGET_ACCURACY[i], GAPS[i]
        for setting, scale in (("budget10", 0.3), ("budget25", 0.4), ("ood", 0.2), ("wrn50_2", 0.45), ("label-only", 0.5)):
            rows.append(row(m, "model_stealing.model_stealing", setting,
                            {"attack_accuracy": scale * t + 0.1, "agreement": scale * t + 0.1, "target_accuracy": t,
                             "surrogate": "wrn50_2" if setting == "wrn50_2" else "resnet18"}))
        for attack in ("correctness", "mlp-full", "mlp-top3"):
            rows.append(row(m, "membership_inference.membership_inference", attack,
                            {"auc": 0.5 + g / 2, "tpr_at_fpr_1e-2": 0.02, "tpr_at_fpr_1e-3": 0.0, "overfit_gap": g}))
        for attack in ("fgsm-whitebox", "fgsm-transfer"):
            for eps in (0.01, 0.03, 0.1):
                drop = eps * (2 - t) * (3 if attack == "fgsm-whitebox" else 1)
                rows.append(row(m, "evasion.accuracy_drop", f"{attack}-eps{eps}",
                                {"clean_accuracy": t, "adversarial_accuracy": t - drop, "accuracy_drop": drop,
                                 "eps": eps}))
        for detector, flagged in (("neural-cleanse", i == 0), ("strip", False), ("neo", False)):
            metrics = {"detector": detector, "dataset_family": "cifar10", "flagged": flagged, "score": 1.0 + i / 2,
                       "score_name": "anomaly_index", "threshold": 2, "runtime_s": 10.0 * (i + 1)}
            if detector == "neural-cleanse":
                png = art / m / "backdoor_detection.detection" / "neural-cleanse" / "trigger-label3.png"
                png.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (16, 8), (200, 30, 30)).save(png)
                metrics.update(anomaly_index=1.0 + i / 2, trigger_label=3,
                               trigger_png=png.relative_to(json_dir).as_posix())
            rows.append(row(m, "backdoor_detection.detection", detector, metrics))
    rows.append(row("model-0", "model_stealing.model_stealing", "budget99", {}, outcome="failed",
                    message="RuntimeError: out of memory"))
    return rows, models


def is_png(path: Path) -> bool:
    if path.read_bytes()[:8] != PNG_MAGIC:
        return False
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size[0] > 100 and image.size[1] > 100


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    rows, models = full_rows(root)
    results = write_doc(root / "results.json", rows, models)
    reported = root / "reported.csv"
    reported.write_text("model,benchmark,setting,metric,value,database_column\n"
                        "model-0,task_performance.accuracy,default,test_accuracy,0.72,test_accuracy\n"
                        "model-1,task_performance.accuracy,default,test_accuracy,0.74,test_accuracy\n"
                        "model-2,task_performance.accuracy,default,test_accuracy,0.83,test_accuracy\n"
                        "model-9,task_performance.accuracy,default,test_accuracy,0.5,test_accuracy\n", encoding="utf-8")
    report = build_report([results], root / "report", reported=[str(reported)], dpi=DPI)
    return report


# --- known answers -------------------------------------------------------------------------------

def test_pearson_known_values():
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]).r == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [8, 6, 4, 2]).r == pytest.approx(-1.0)
    assert pearson([1, 2], [1, 2]).r is None  # too few points
    assert pearson([1, 1, 1], [1, 2, 3]).r is None  # no spread
    assert pearson([1, 2, None, 4], [1, 2, 5, float("nan")]).n == 2


def test_planted_perfect_correlation(tmp_path):
    rows, models = planted_rows()
    report = build_report([write_doc(tmp_path / "r.json", rows, models)], tmp_path / "out", use_reported=False, dpi=DPI)
    out = report.out_dir

    table = read_csv(out / "stealing-accuracy-vs-target.csv")
    assert len(table) == 1 and table[0]["data"] == "cifar10"
    assert int(table[0]["n"]) == 6
    assert float(table[0]["pearson_r"]) == pytest.approx(1.0, abs=1e-9)
    assert float(table[0]["mean_attack_accuracy"]) == pytest.approx(0.5 * sum(TARGET_ACCURACY) / 6 + 0.1)
    mia = [r for r in read_csv(out / "mia-auc-vs-gap.csv") if r["attack"] == "mentropy-global"]
    assert float(mia[0]["pearson_r"]) == pytest.approx(1.0, abs=1e-9)
    correlations = read_csv(out / "correlations.csv")
    assert any(r["figure"] == "stealing-accuracy-vs-target" and float(r["pearson_r"]) == pytest.approx(1.0)
               for r in correlations)

    page = (out / "index.html").read_text(encoding="utf-8")
    assert '<td>1.000</td>' in page  # the r in the table on the page
    for name in ("stealing-accuracy-vs-target.png", "stealing-agreement-vs-accuracy.png", "mia-auc-vs-gap.png"):
        assert is_png(out / name), name
        assert f'src="{name}"' in page
    assert "stealing-accuracy-vs-target.csv" in page
    assert "![" in (out / "README.md").read_text(encoding="utf-8")


def test_merge_flags_conflicting_duplicate(tmp_path, capsys):
    rows, models = planted_rows()
    first = write_doc(tmp_path / "shard1.json", rows[:9], models)
    changed = json.loads(json.dumps(rows[3]))  # model-1's task row, other numbers
    changed["metrics"]["test_accuracy"] = 0.5
    changed["finished_at"] = "2026-02-01T00:00:00+00:00"
    second = write_doc(tmp_path / "shard2.json", [rows[0], changed, *rows[9:]], models)  # rows[0]: identical

    merged = load_and_merge([first, second])
    assert len(merged.rows) == len(rows)
    assert merged.collapsed == 1
    assert [c.key for c in merged.conflicts] == ["model-1::task_performance.accuracy::default"]
    assert merged.conflicts[0].kept == str(second)  # finished later
    assert "test_accuracy: 0.5 vs 0.75" in merged.conflicts[0].differences

    assert main([str(first), str(second), "-o", str(tmp_path / "out"), "--no-reported", "--dpi", str(DPI)]) == 0
    captured = capsys.readouterr()
    assert "warning: duplicate row with different results: model-1::task_performance.accuracy::default" in captured.err
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert 'id="duplicates"' in page and "model-1::task_performance.accuracy::default" in page
    assert read_csv(tmp_path / "out" / "duplicates.csv")[0]["kept_from"] == str(second)


def test_passed_row_wins_over_failed_duplicate(tmp_path):
    rows, models = planted_rows(3)
    failed = dict(rows[1], outcome="failed", metrics={}, finished_at="2027-01-01T00:00:00+00:00")
    merged = load_and_merge([write_doc(tmp_path / "a.json", rows, models), write_doc(tmp_path / "b.json", [failed], models)])
    kept = [r for r in merged.rows if r["model"] == rows[1]["model"] and r["benchmark"] == rows[1]["benchmark"]]
    assert kept[0]["outcome"] == "passed" and len(merged.conflicts) == 1


def test_sections_without_data_are_absent(tmp_path):
    rows, models = planted_rows()
    task_only = [r for r in rows if r["benchmark"] == "task_performance.accuracy"]
    task_only.append(row("model-0", "model_stealing.model_stealing", "budget50", {}, outcome="skipped",
                         message="no GPU"))
    report = build_report([write_doc(tmp_path / "r.json", task_only, models)], tmp_path / "out", use_reported=False, dpi=DPI)
    assert report.sections == ["overview", "not-passed", "datasets", "purpose", "robustness", "metadata", "correlations"]
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    for absent in ("model-stealing", "membership-inference", "evasion", "backdoor-detection", "reported", "duplicates"):
        assert f'id="{absent}"' not in page
    assert not list((tmp_path / "out").glob("stealing-*")) and not list((tmp_path / "out").glob("mia-*"))
    assert "no GPU" in page  # the skipped row is listed, not analysed


def test_models_without_purpose_are_left_out_of_the_purpose_comparison(tmp_path):
    # benchmark and security models, plus stealing and membership rows of a model with no purpose
    rows, models = planted_rows()
    models["model-unannotated"] = {k: v for k, v in model_info(9).items() if k != "annotations"}
    rows.append(row("model-unannotated", "model_stealing.model_stealing", "budget50",
                    {"attack_accuracy": 0.3, "agreement": 0.32, "target_accuracy": 0.6}))
    rows.append(row("model-unannotated", "membership_inference.membership_inference", "mentropy-global",
                    {"auc": 0.9, "overfit_gap": 0.3}))
    report = build_report([write_doc(tmp_path / "r.json", rows, models)], tmp_path / "out", use_reported=False, dpi=DPI)
    out = report.out_dir
    assert "purpose" in report.sections
    assert is_png(out / "purpose-stealing.png") and is_png(out / "purpose-mia.png")
    shown = [r for r in read_csv(out / "correlations.csv") if r["figure"] in ("purpose-stealing", "purpose-mia")]
    assert {r["group"] for r in shown} == {"benchmark", "security", "all"}
    assert {int(r["n"]) for r in shown if r["group"] == "all"} == {6}  # the six annotated models only
    page = (out / "index.html").read_text(encoding="utf-8")
    purpose = page[page.index('id="purpose"'):]
    assert "Left out of this comparison: 1 model(s) without" in purpose
    assert "model-unannotated" in purpose[:purpose.index("<img")]


def test_scatter_names_rows_without_a_group_unknown():
    frame = pd.DataFrame({"model": list("abcdefg"), "x": range(7), "y": range(7),
                          "purpose": ["benchmark", None, "security", None, "benchmark", "security", None]})
    fig, axes = figures.panels(1)
    groups = scatter_groups(axes[0], frame, "x", "y", "purpose", xlabel="x", ylabel="y", title="t")
    assert set(groups) == {"benchmark", "security", figures.MISSING, "all"}
    assert groups[figures.MISSING].n == 3 and groups["all"].n == 7
    plt.close(fig)


def test_full_report_has_every_section(full_report):
    assert full_report.sections == ["overview", "not-passed", "datasets", "model-stealing", "membership-inference",
                                    "backdoor-detection", "evasion", "purpose", "robustness", "metadata", "reported",
                                    "correlations"]
    out = full_report.out_dir
    for name in ("stealing-settings.png", "stealing-settings-vs-target.png", "mia-mlp-full-vs-top3.png",
                 "mia-tpr-low-fpr.png", "backdoor-detection.png", "evasion-fgsm-whitebox.png",
                 "evasion-fgsm-transfer.png", "evasion-drop-vs-eps.png", "purpose-task.png", "purpose-stealing.png",
                 "purpose-mia.png", "metadata-year.png", "metadata-venue.png", "reported-vs-measured.png"):
        assert is_png(out / name), name
    table1 = {r["detector"]: r for r in read_csv(out / "backdoor-false-positives.csv")}
    assert float(table1["neural-cleanse"]["false_positive_rate"]) == pytest.approx(1 / 6)
    assert float(table1["strip"]["false_positive_rate"]) == 0.0
    assert float(table1["neo"]["mean_runtime_s"]) == pytest.approx(35.0)
    assert (out / "triggers" / "model-0-label3.png").read_bytes()[:8] == PNG_MAGIC
    assert 'src="triggers/model-0-label3.png"' in full_report.index.read_text(encoding="utf-8")
    settings = {r["setting"]: r for r in read_csv(out / "stealing-settings.csv")}
    assert float(settings["ood"]["mean_change_vs_budget50"]) == pytest.approx(-0.3 * sum(TARGET_ACCURACY) / 6)
    reported = read_csv(out / "reported-vs-measured.csv")
    assert {r["model"] for r in reported} == {"model-0", "model-1", "model-2"}  # model-9 was not measured
    assert float([r for r in reported if r["model"] == "model-0"][0]["difference"]) == pytest.approx(0.70 - 0.72)
    evasion = {(r["attack"], r["eps"]): r for r in read_csv(out / "evasion.csv")}
    assert float(evasion[("fgsm-whitebox", "0.1")]["pearson_r_drop_vs_clean"]) == pytest.approx(-1.0)
    assert "RuntimeError: out of memory" in (out / "index.html").read_text(encoding="utf-8")


def test_cli_registration_and_rerun_cleans_up(tmp_path):
    rows, models = planted_rows()
    results = write_doc(tmp_path / "r.json", rows, models)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("not the report's", encoding="utf-8")
    parser = argparse.ArgumentParser(prog="securitynet")
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", str(results), "-o", str(out), "--no-reported", "--dpi", str(DPI)])
    assert args.run(args) == 0
    assert (out / "stealing-accuracy-vs-target.png").is_file()

    task_only = [r for r in rows if r["benchmark"] == "task_performance.accuracy"]
    task_file = write_doc(tmp_path / "t.json", task_only, models)
    assert main([str(task_file), "-o", str(out), "--no-reported", "--dpi", str(DPI)]) == 0
    assert not (out / "stealing-accuracy-vs-target.png").exists()  # the old report's file is gone
    assert (out / "mine.txt").is_file()  # files the report did not write are kept
    assert main([str(tmp_path / "missing.json"), "-o", str(out)]) == 2


def test_reported_csv_needs_its_columns(tmp_path, capsys):
    rows, models = planted_rows()
    bad = tmp_path / "bad.csv"
    bad.write_text("model,value\nmodel-0,1\n", encoding="utf-8")
    assert main([str(write_doc(tmp_path / "r.json", rows, models)), "-o", str(tmp_path / "o"), "--reported", str(bad)]) == 2
    assert "needs the columns model, benchmark, setting, metric, value" in capsys.readouterr().err


def test_embedded_page_has_no_external_images(tmp_path):
    rows, models = planted_rows(3)
    report = build_report([write_doc(tmp_path / "r.json", rows, models)], tmp_path / "out", use_reported=False,
                          embed=True, dpi=DPI)
    page = report.index.read_text(encoding="utf-8")
    assert 'src="data:image/png;base64,' in page and 'src="stealing' not in page


# --- readability with few models ----------------------------------------------------------------

def axes_texts(ax) -> dict[str, list[str]]:
    """The words an axes shows: its title, its legend entries and its point labels."""
    legend = ax.get_legend()
    return {"title": [ax.get_title()], "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
            "points": [t.get_text() for t in ax.texts]}


def outside_axes(fig) -> list[str]:
    """Point labels whose drawn extent leaves their axes (after the figure is laid out)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes:
        box = ax.get_window_extent(renderer)
        for text in ax.texts:
            ext = text.get_window_extent(renderer)
            if ext.x0 < box.x0 - 0.5 or ext.x1 > box.x1 + 0.5 or ext.y0 < box.y0 - 0.5 or ext.y1 > box.y1 + 0.5:
                out.append(text.get_text())
    return out


def test_correlation_label_needs_three_points():
    assert pearson([0.1, 0.9], [0.2, 0.8]).label() is None  # n = 2: no r at all
    assert pearson([1, 2, 3], [2, 4, 7]).label().startswith("r = 0.99")
    assert pearson([1, 2, 3], [2, 4, 7]).label().endswith("(n = 3)")
    assert pearson([1, 1, 1], [1, 2, 3]).label() is None  # no spread
    pooled = pearson([0.7, 0.7, 0.7, 0.9, 0.9, 0.9], [0.1, 0.2, 0.3, 0.5, 0.6, 0.8])  # two models, 3 settings
    assert pooled.n == 6 and pooled.r > 0.85 and pooled.label() is None


def test_short_ids_drop_the_shared_words():
    assert short_ids(["demo-digits-cnn", "demo-digits-rbf-overfit"]) == {"demo-digits-cnn": "cnn",
                                                                         "demo-digits-rbf-overfit": "rbf-overfit"}
    assert short_ids(["cifar10-resnet20-akamaster", "cifar10-resnet32-akamaster"]) == {
        "cifar10-resnet20-akamaster": "resnet20", "cifar10-resnet32-akamaster": "resnet32"}
    assert short_ids(["a-b", "a-b-c"]) == {"a-b": "b", "a-b-c": "b-c"}  # each keeps at least one word
    assert short_ids(["only-one-model"]) == {"only-one-model": "only-one-model"}
    assert short_ids(["x-" + "long" * 10, "x-y"])["x-" + "long" * 10].endswith("…")


def test_few_models_get_markers_labels_and_a_legend_inside_the_axes():
    # two points at the top-right corner with long ids: their labels must turn inwards
    frame = pd.DataFrame({"model": ["zoo-left-model", "zoo-rightmost-model-with-a-long-id", "zoo-top-right"],
                          "x": [0.0, 1.0, 0.98], "y": [0.0, 1.0, 0.97]})
    fig, axes = figures.panels(2, panel=(3.0, 2.5))
    two = scatter_groups(axes[0], frame.iloc[:2], "x", "y", None, xlabel="x", ylabel="y", title="two")
    three = scatter_groups(axes[1], frame, "x", "y", None, xlabel="x", ylabel="y", title="three")
    assert two["all"].n == 2 and three["all"].n == 3
    shown = axes_texts(axes[0])
    assert shown["title"] == ["two"]  # no r with two points
    assert shown["legend"] == ["zoo-left-model", "zoo-rightmost-model-with-a-long-id"]
    assert shown["points"] == ["left-model", "rightmost-model-w…"]
    assert axes_texts(axes[1])["title"][0].startswith("three\nr = ")
    assert axes_texts(axes[1])["points"] == ["left-model", "rightmost-model-w…", "top-right"]
    markers = [h.get_marker() for h in axes[1].get_legend().legend_handles]
    assert len(set(markers)) == 3
    assert outside_axes(fig) == []
    plt.close(fig)


def test_many_models_are_neither_labelled_nor_listed():
    n = MAX_IDENTIFIED + 1
    frame = pd.DataFrame({"model": [f"m{i}" for i in range(n)], "x": range(n), "y": range(n)})
    fig, axes = figures.panels(1)
    scatter_groups(axes[0], frame, "x", "y", None, xlabel="x", ylabel="y", title="many")
    assert axes_texts(axes[0]) == {"title": [f"many\nr = 1.000 (n = {n})"], "legend": [], "points": []}
    plt.close(fig)


def test_strip_tells_few_models_apart():
    frame = pd.DataFrame({"model": ["a-1", "a-2"] * 3, "setting": ["s1", "s1", "s2", "s2", "s3", "s3"],
                          "value": [0.5, 0.5, 0.6, 0.7, 0.9, 0.9]})
    fig, axes = figures.panels(2)
    strip_by_category(axes[0], frame, "setting", "value", xlabel="setting", ylabel="value", title="few",
                      connect="model", identify="model")
    assert axes_texts(axes[0])["legend"] == ["a-1", "a-2"]
    points = [c.get_offsets() for c in axes[0].collections]
    assert len(points) == 2 and all(len(p) == 3 for p in points)  # one series per model
    assert all(points[0][:, 0] < points[1][:, 0])  # side by side: equal values do not hide each other
    lines = [line.get_color() for line in axes[0].get_lines()]
    assert len(lines) == 2 and lines[0] != lines[1]  # each model's line in its own colour
    many = pd.DataFrame({"model": [f"m{i}" for i in range(MAX_IDENTIFIED + 1)], "setting": "s1", "value": 0.5})
    strip_by_category(axes[1], many, "setting", "value", xlabel="setting", ylabel="value", title="many",
                      identify="model")
    assert axes[1].get_legend() is None
    plt.close(fig)


def test_two_model_report_shows_no_r_and_names_its_points(tmp_path, monkeypatch):
    """Every figure of a two-model report, inspected before it is saved."""
    seen: dict[str, list[dict]] = {}
    outside: dict[str, list[str]] = {}
    save = figures.save

    def inspect(fig, path, title, dpi=figures.DPI):
        seen[Path(path).stem] = [axes_texts(ax) for ax in fig.axes if ax.get_visible()]
        outside[Path(path).stem] = outside_axes(fig)
        return save(fig, path, title, dpi)

    monkeypatch.setattr(figures, "save", inspect)
    rows, models = full_rows(tmp_path)
    keep = {"model-0", "model-1"}
    rows = [r for r in rows if r["model"] in keep]
    build_report([write_doc(tmp_path / "r.json", rows, {m: models[m] for m in keep})], tmp_path / "out",
                 use_reported=False, dpi=DPI)
    assert {"stealing-accuracy-vs-target", "stealing-settings", "backdoor-detection", "mia-auc-vs-gap"} <= set(seen)
    words = [w for axes in seen.values() for ax in axes for part in ax.values() for w in part]
    assert [w for w in words if "r undefined" in w or "r = " in w] == []  # not even pooled over settings
    assert seen["stealing-accuracy-vs-target"][0]["title"] == ["cifar10"]
    assert seen["stealing-accuracy-vs-target"][0]["points"] == ["0", "1"]
    assert seen["stealing-accuracy-vs-target"][0]["legend"] == ["model-0", "model-1"]
    assert seen["stealing-settings"][0]["legend"] == ["model-0", "model-1"]
    assert seen["backdoor-detection"][0]["legend"] == ["model-0", "model-1"]
    assert {name: texts for name, texts in outside.items() if texts} == {}


# --- the page in a browser -----------------------------------------------------------------------

class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
    the browser reads commands on fd 3 and writes replies and events on fd 4, NUL-separated JSON)."""

    def __init__(self, profile: Path):
        cmd_read, self._cmd = os.pipe()
        self._out, out_write = os.pipe()

        def wire():  # in the child: the pipe ends become fds 3 and 4
            a, b = os.dup(cmd_read), os.dup(out_write)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_read)
        os.close(out_write)
        self._buffer, self._id, self.events = b"", 0, []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from Chromium")
            if select.select([self._out], [], [], left)[0]:
                chunk = os.read(self._out, 1 << 16)
                if not chunk:
                    raise EOFError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._read(deadline))

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read(deadline))
        except TimeoutError:
            pass

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, EOFError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd)
        os.close(self._out)


def open_page(page: Path, profile: Path) -> tuple[list[dict], list[str]]:
    """Load `page`; return its images' load state and every console message, exception or log error."""
    browser = Chromium(profile)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        script = ("JSON.stringify(Array.from(document.images).map(i => ({src: i.getAttribute('src'), "
                  "complete: i.complete, width: i.naturalWidth})))")
        value = browser.call("Runtime.evaluate", {"expression": script, "returnByValue": True},
                             session=session)["result"]["value"]
        browser.drain(0.5)
    finally:
        browser.close()
    problems = []
    for event in browser.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            problems.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Runtime.exceptionThrown":
            problems.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
            entry = params["entry"]
            problems.append(f"log {entry['level']}: {entry.get('text')} {entry.get('url', '')}")
    return json.loads(value), problems


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                  "(apt-get install -y chromium); .ci/run installs it")
def test_page_loads_every_image_without_console_errors(full_report, tmp_path):
    images, problems = open_page(full_report.index, tmp_path / "profile")
    page = full_report.index.read_text(encoding="utf-8")
    assert len(images) == page.count("<img ") >= 20
    broken = [i["src"] for i in images if not (i["complete"] and i["width"] > 0)]
    assert broken == []
    assert problems == []


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_browser_check_catches_a_broken_page(full_report, tmp_path):
    """The check itself can fail: a missing image and a console error are both reported."""
    page = tmp_path / "page"
    page.mkdir()
    shutil.copy(full_report.out_dir / "mia-auc-vs-gap.png", page / "ok.png")
    (page / "index.html").write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title></head><body>'
                                     '<img src="ok.png"><img src="missing.png">'
                                     '<script>console.error("boom")</script></body></html>', encoding="utf-8")
    images, problems = open_page(page / "index.html", tmp_path / "profile")
    assert [i["width"] > 0 for i in images] == [True, False]
    assert any("boom" in p for p in problems)


def test_a_figure_title_sits_above_every_panel_title():
    """19 panels and a title of two lines: no panel title is covered by it."""
    fig, axes = figures.panels(19)
    for i, ax in enumerate(axes):
        ax.plot([0, 1], [0, 1])
        ax.set_title(f"attack {i}\nr = 0.5 (n = 6)", fontsize=9)
    figures.lay_out(fig, "Membership inference AUC against the overfitting gap, one panel per attack " * 2)
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    assert all(ax.title.get_window_extent(renderer).y1 <= title.y0 for ax in axes)
    plt.close(fig)


def test_long_tables_and_reasons_are_shown_whole_in_sections_that_fold(tmp_path):
    rows, models = planted_rows()
    reason = ("Skipped: cifar10-resnet20-akamaster: resnet20-12fca82f.th not in the cache or a mirror (offline); "
              "--securitynet-skip-missing skips it (`securitynet catalog prefetch` fetches it) " * 3).strip()
    rows += [row(f"model-{i % 6}", "model_stealing.model_stealing", f"s{i}", {}, outcome="skipped", message=reason)
             for i in range(75)]
    report = build_report([write_doc(tmp_path / "r.json", rows, models)], tmp_path / "out", use_reported=False, dpi=DPI)
    page = report.index.read_text(encoding="utf-8")
    not_passed = page[page.index('id="not-passed"'):page.index("</section>", page.index('id="not-passed"'))]
    assert not_passed.count("</tr>") == 76 and "All 75 rows; the box scrolls." in not_passed  # header + every row
    assert not_passed.count(html.escape(reason)) == 75 and "..." not in not_passed  # every reason, whole
    assert page.count('<details class="section" open>') == len(report.sections)
    readme = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "<details><summary>All 75 rows (click to show)</summary>" in readme and "First 60" not in readme
