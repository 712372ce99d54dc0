"""The report shows the recorded intervals: `value ± half width` in tables, interval bars in figures,
the bounds in the CSVs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
from matplotlib.collections import LineCollection

from pytest_securitynet.report import build_report
from pytest_securitynet.report import figures as F
from pytest_securitynet.report.blocks import format_frame
from pytest_securitynet.report.frames import CI_HIGH, CI_LOW
from pytest_securitynet.results.rows import SCHEMA


def test_a_table_shows_value_and_half_width_and_drops_the_bounds():
    frame = pd.DataFrame({"model": ["a", "b"], "auc": [0.61, 0.7], f"auc{CI_LOW}": [0.55, None],
                          f"auc{CI_HIGH}": [0.67, None], "n": [10, 20]})
    shown = format_frame(frame)
    assert list(shown.columns) == ["model", "auc", "n"]
    assert list(shown["auc"]) == ["0.610 ± 0.060", "0.700"]  # a row without an interval shows the value


def test_a_figure_draws_interval_bars_where_points_have_them():
    data = pd.DataFrame({"model": ["a", "b", "c"], "gap": [0.1, 0.2, 0.3], "auc": [0.55, 0.6, 0.7],
                         f"auc{CI_LOW}": [0.5, 0.55, 0.66], f"auc{CI_HIGH}": [0.6, 0.65, 0.74]})
    fig, axes = F.panels(2)
    F.scatter_groups(axes[0], data, "gap", "auc", None, xlabel="gap", ylabel="auc", title="with")
    F.scatter_groups(axes[1], data.drop(columns=[f"auc{CI_LOW}", f"auc{CI_HIGH}"]), "gap", "auc", None,
                     xlabel="gap", ylabel="auc", title="without")
    bars = [c for c in axes[0].collections if isinstance(c, LineCollection)]
    assert bars and len(bars[0].get_segments()) == 3
    segment = bars[0].get_segments()[2]  # the third point's bar spans its interval
    assert segment[0][1] == 0.66 and segment[1][1] == 0.74
    assert not [c for c in axes[1].collections if isinstance(c, LineCollection)]


def test_the_per_model_table_of_a_report_carries_the_intervals(tmp_path):
    rows = []
    for i, model in enumerate(("m0", "m1")):
        accuracy = 0.8 + 0.05 * i
        metrics = {"test_accuracy": accuracy, "train_accuracy": 0.9, "overfit_gap": 0.9 - accuracy,
                   "intervals": {"test_accuracy": {"low": accuracy - 0.02, "high": accuracy + 0.02}}}
        rows.append({"model": model, "benchmark": "task_performance.accuracy", "setting": "default",
                     "outcome": "passed", "dataset": "cifar10", "metrics": metrics})
        rows.append({"model": model, "benchmark": "membership_inference.membership_inference",
                     "setting": "mentropy-global", "outcome": "passed", "dataset": "cifar10",
                     "metrics": {"auc": 0.6 + i / 10, "intervals": {"auc": {"low": 0.55 + i / 10,
                                                                             "high": 0.65 + i / 10}}}})
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"schema": SCHEMA, "run": {"status": "complete"}, "models": {}, "results": rows}))
    report = build_report([path], tmp_path / "out", use_reported=False, dpi=40)
    page = report.index.read_text(encoding="utf-8")
    assert "0.800 ± 0.020" in page and "0.700 ± 0.050" in page
    with open(Path(tmp_path / "out" / "per-model.csv"), newline="") as fh:
        table = list(csv.DictReader(fh))
    assert float(table[0][f"test_accuracy{CI_LOW}"]) == 0.78
