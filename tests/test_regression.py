"""Regression checks: the comparison functions, the committed baseline, and a real run through pytest
that passes on the akamaster ResNet-20 and fails on a copy whose final layer is shuffled."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import pytest_securitynet.plugin.hooks
from pytest_securitynet.results.regression import (
    REPORTED, Drift, baseline_document, compare, format_table, load_reference, load_reported, parse_tolerances,
    tolerances_for, write_baseline,
)
from pytest_securitynet.results.rows import SCHEMA
from pytest_securitynet.results.spec import BASELINE, BenchmarkSpec, Metric, builtin_specs

from conftest import AKAMASTER_DIR, DATA_DIR, needs_shared

REPO = Path(__file__).resolve().parents[1]
BASELINE_FILE = REPO / "baselines" / "akamaster-resnet20-cifar10-jpeg.json"
MODEL = "cifar10-resnet20-akamaster"
SELECTION = ("resnet20 and akamaster and (accuracy or correctness or mentropy or entropy or confidence or loss) "
             "and not logp and not logit")  # the paper's attacks, which the baseline holds
LIMIT = "1000"

registered = pytest.mark.skipif(
    not hasattr(pytest_securitynet.plugin.hooks, "regression"),
    reason="RegressionPlugin is not registered by pytest_securitynet.plugin.hooks yet (see docs/regression.md)",
)


def row(model="m", benchmark="task_performance.accuracy", setting="default", outcome="passed", **metrics):
    return {"model": model, "benchmark": benchmark, "setting": setting, "outcome": outcome,
            "metrics": metrics, "dataset": "cifar10", "dataset_source": "cifar10-jpeg", "seed": 0}


# --- pure functions ---------------------------------------------------------------------------

def test_compare_flags_only_metrics_outside_their_tolerance():
    reference = {"test_accuracy": 0.80, "train_accuracy": 0.90, "auc": 0.55, "n_test": 1000}
    drifts = compare({"test_accuracy": 0.805, "train_accuracy": 0.85, "n_test": 1000}, reference,
                     {"test_accuracy": 0.01, "train_accuracy": 0.01, "auc": 0.01})
    by_metric = {d.metric: d for d in drifts}
    assert set(by_metric) == {"test_accuracy", "train_accuracy", "auc"}  # n_test has no tolerance
    assert by_metric["test_accuracy"].ok
    assert not by_metric["train_accuracy"].ok and by_metric["train_accuracy"].delta == pytest.approx(-0.05)
    assert by_metric["auc"].measured is None and not by_metric["auc"].ok  # recorded nowhere: a drift
    assert Drift("x", 0.51, 0.50, 0.01).ok  # the boundary counts as within


def test_wildcard_tolerance_covers_every_other_metric_and_overrides_win():
    tol = parse_tolerances(["test_accuracy=0.05", "*=0"])
    assert tol == {"test_accuracy": 0.05, "*": 0.0}
    drifts = compare({"test_accuracy": 0.84, "n_test": 999}, {"test_accuracy": 0.80, "n_test": 1000}, tol)
    assert [(d.metric, d.ok) for d in drifts] == [("n_test", False), ("test_accuracy", True)]
    for bad in ("auc", "auc=", "=0.1", "auc=-1", "auc=x", "auc=nan"):
        with pytest.raises(ValueError, match="METRIC=ABS"):
            parse_tolerances([bad])


def test_tolerances_come_from_the_benchmark_spec_per_kind_of_reference(tmp_path):
    reported = load_reported()
    rerun = load_reference(write_baseline(tmp_path / "b.json", [row(test_accuracy=0.8)]))
    task = builtin_specs()["task_performance.accuracy"]
    assert tolerances_for(rerun, task) == {"test_accuracy": 0.01, "train_accuracy": 0.01, "overfit_gap": 0.01}
    assert tolerances_for(reported, task) == {"test_accuracy": 0.02, "train_accuracy": 0.02, "overfit_gap": 0.03}
    assert tolerances_for(rerun, task, {"auc": 0.5, "test_accuracy": 0.2}) == {
        "test_accuracy": 0.2, "train_accuracy": 0.01, "overfit_gap": 0.01, "auc": 0.5}  # the option wins
    assert tolerances_for(rerun, None) == {} and tolerances_for(rerun, None, {"*": 0.1}) == {"*": 0.1}
    for spec in builtin_specs().values():  # the database's numbers are never held closer than a re-run
        for metric, tolerance in spec.tolerances(REPORTED).items():
            assert tolerance >= spec.tolerances(BASELINE)[metric], (spec.id, metric)
    # One metric name, two benchmarks, two meanings: the MIA row's gap is members minus non-members,
    # which the database does not report, so only the task benchmark's is compared with it.
    mia = builtin_specs()["membership_inference.membership_inference"]
    assert "overfit_gap" in task.tolerances(REPORTED) and "overfit_gap" not in mia.tolerances(REPORTED)
    assert mia.tolerances(BASELINE)["tpr_at_fpr_1e-3"] == 0.02


def test_a_specs_tolerances_decide_what_is_compared():
    spec = BenchmarkSpec(id="gap.gap", title="Gap", metrics=[Metric("gap", baseline=0.05), "queries"])
    tolerances = spec.tolerances(BASELINE)
    assert tolerances == {"gap": 0.05}  # `queries` is shown, never compared
    drifts = compare({"gap": 0.30, "queries": 7}, {"gap": 0.20, "queries": 9}, tolerances)
    assert [(d.metric, d.ok) for d in drifts] == [("gap", False)]
    assert [d.ok for d in compare({"gap": 0.24}, {"gap": 0.20}, tolerances)] == [True]


def test_baseline_keeps_passed_rows_and_loads_as_a_reference(tmp_path):
    rows = [row(test_accuracy=0.8, overfit_gap=0.05, label="text"), row(model="bad", outcome="failed", test_accuracy=0.1)]
    specs = {"task_performance.accuracy": {"id": "task_performance.accuracy", "title": "Task"},
             "other.benchmark": {"id": "other.benchmark", "title": "no rows"}}
    doc = baseline_document(rows, {"argv": ["pytest"], "settings": {"limit": 1000}, "versions": {}}, specs)
    assert doc["schema"] == SCHEMA and [r["model"] for r in doc["results"]] == ["m"]
    assert list(doc["benchmarks"]) == ["task_performance.accuracy"]  # the specs of the rows kept
    ref = load_reference(write_baseline(tmp_path / "b.json", rows, benchmarks=specs))
    assert list(ref.benchmarks) == ["task_performance.accuracy"]
    assert ref.kind == "results" and set(ref.rows) == {("m", "task_performance.accuracy", "default")}
    assert ref.get("m", "task_performance.accuracy", "default") == {"test_accuracy": 0.8, "overfit_gap": 0.05}
    assert ref.context[("m", "task_performance.accuracy", "default")]["dataset_source"] == "cifar10-jpeg"


def test_a_results_json_is_a_reference_too(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"schema": SCHEMA, "run": {}, "models": {},
                                "results": [row(test_accuracy=0.7), row(setting="other", outcome="skipped")]}))
    assert set(load_reference(path).rows) == {("m", "task_performance.accuracy", "default")}
    with pytest.raises(FileNotFoundError, match="neither `reported`"):
        load_reference(tmp_path / "missing.json")


def test_reported_numbers_are_keyed_like_the_benchmarks_record_them():
    ref = load_reference(REPORTED)
    assert ref.get("cifar10-resnet20-pytorchcv", "task_performance.accuracy", "default") == {
        "train_accuracy": 0.98576, "test_accuracy": 0.9384, "overfit_gap": 0.04736}
    assert ref.get("cifar10-resnet20-pytorchcv", "membership_inference.membership_inference", "mentropy-global") == {
        "auc": 0.546262}
    assert set(ref.get("cifar10-resnet20-pytorchcv", "model_stealing.model_stealing", "budget50")) == {
        "attack_accuracy", "agreement"}
    # MedMNIST rows have no train accuracy in the database: neither it nor a gap computed from it is kept.
    medmnist = ref.get("bloodmnist-resnet18_28_1-medmnist", "task_performance.accuracy", "default")
    assert medmnist == {"test_accuracy": 0.957907}


def test_table_shows_measured_reference_and_marks_drifts():
    drifts = [Drift("test_accuracy", 0.1, 0.807, 0.01, (0.08, 0.12), (0.78, 0.83)),
              Drift("train_accuracy", 0.863, 0.863, 0.01)]
    table = format_table(drifts, "baselines/x.json")
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "measured", "reference", "delta", "gap", "tolerance"]
    assert lines[2].split() == ["test_accuracy", "0.1000±0.0200", "0.8070±0.0250", "-0.7070", "0.6600", "0.0100",
                                "DRIFT"]
    assert "DRIFT" not in lines[3]
    assert format_table(drifts, "reported (SecurityNet database)").splitlines()[0].split()[2] == "reported"


def test_drift_is_decided_by_the_distance_between_intervals():
    # 200 samples: intervals of about +-0.055; a delta of 0.06 is within sampling noise of both rows.
    wide = Drift("auc", 0.66, 0.60, 0.01, (0.605, 0.715), (0.545, 0.655))
    assert wide.gap == 0 and wide.ok
    # 10,000 samples: intervals of about +-0.01; the same delta is a drift.
    narrow = Drift("auc", 0.66, 0.60, 0.01, (0.65, 0.67), (0.59, 0.61))
    assert narrow.gap == pytest.approx(0.04) and not narrow.ok
    # The reported numbers have no interval: the distance from the reference value to the measured interval.
    assert Drift("auc", 0.66, 0.60, 0.01, (0.605, 0.715), None).ok
    assert not Drift("auc", 0.66, 0.60, 0.01, (0.63, 0.69), None).ok
    # Without intervals (an older baseline) the tolerance alone decides: it is the floor.
    assert Drift("auc", 0.61, 0.60, 0.01).ok and not Drift("auc", 0.62, 0.60, 0.01).ok
    # A tolerance from the command line overrides: |delta| is held to it, intervals ignored.
    assert not Drift("auc", 0.66, 0.60, 0.01, (0.605, 0.715), (0.545, 0.655), absolute=True).ok
    reference_intervals = {"auc": (0.545, 0.655)}
    metrics = {"auc": 0.66, "intervals": {"auc": {"low": 0.605, "high": 0.715}}}
    assert [d.ok for d in compare(metrics, {"auc": 0.60}, {"auc": 0.01}, reference_intervals)] == [True]
    assert [d.ok for d in compare(metrics, {"auc": 0.60}, {"auc": 0.01}, reference_intervals, absolute={"auc"})] == [False]
    assert [d.absolute for d in compare(metrics, {"auc": 0.60}, {"*": 0.01}, None, absolute={"*"})] == [True]


# --- the committed baseline and a real run ----------------------------------------------------

def test_the_documented_command_makes_the_committed_baseline():
    """docs/regression.md's command selects exactly the committed baseline's rows (the slow test
    below runs this selection and expects one row per baseline row)."""
    text = (REPO / "docs" / "regression.md").read_text()
    command = re.search(r"```bash\n(SECURITYNET_MIRROR=[^`]*?--securitynet-save-baseline baselines/"
                        r"akamaster-resnet20-cifar10-jpeg.json)\n```", text).group(1)
    assert re.search(r'-k "([^"]+)"', command).group(1) == SELECTION
    assert f"--securitynet-limit {LIMIT}" in command and "--securitynet-dataset cifar10=cifar10-jpeg" in command
    assert len(load_reference(BASELINE_FILE).rows) == 9
    # The CI recipe compares the same selection with the committed baseline, strictly.
    recipe = re.search(r"```bash\n(#!/usr/bin/env bash.*?)```", text, re.S).group(1)
    assert re.search(r'-k "([^"]+)"', recipe).group(1) == SELECTION
    assert "--securitynet-compare baselines/akamaster-resnet20-cifar10-jpeg.json --securitynet-compare-strict" in recipe
    assert "bash ci-regression.sh" in text and "actions/upload-artifact" in text


def test_committed_baseline_holds_the_ci_regression():
    ref = load_reference(BASELINE_FILE)
    assert {key[0] for key in ref.rows} == {MODEL}
    settings = {key[2] for key in ref.rows if key[1] == "membership_inference.membership_inference"}
    assert "correctness" in settings and "mentropy-global" in settings and not any("mlp" in s for s in settings)
    assert ref.get(MODEL, "task_performance.accuracy", "default")["n_train"] == int(LIMIT)
    assert {c["dataset_source"] for c in ref.context.values()} == {"cifar10-jpeg"}
    # Every row says what produced it, and its headline metrics carry intervals.
    assert all(len(c["provenance"]["weights_sha256"]) == 64 for c in ref.context.values())
    assert all(ref.intervals[key] for key in ref.rows)


@pytest.fixture
def regression_run(pytester, cache_dir, monkeypatch):
    """Runs the CI regression's benchmarks in a temporary project against the shared real files."""
    monkeypatch.setenv("SECURITYNET_MIRROR", f"{AKAMASTER_DIR}:{DATA_DIR}")
    monkeypatch.setenv("SECURITYNET_OFFLINE", "1")
    monkeypatch.delenv("SECURITYNET_DATASET", raising=False)
    (pytester.path / "benchmarks").mkdir()
    for name in ("test_task_performance.py", "test_membership_inference.py"):
        shutil.copy(REPO / "benchmarks" / name, pytester.path / "benchmarks" / name)

    def run(selection: str, *args: str):
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "benchmarks", "-k", selection, f"--securitynet-cache={cache_dir}",
            "--securitynet-dataset", "cifar10=cifar10-jpeg", "--securitynet-limit", LIMIT,
            f"--securitynet-json={pytester.path / 'out.json'}", *args)

    return run


@registered
@needs_shared(AKAMASTER_DIR, DATA_DIR)
@pytest.mark.slow
def test_real_model_matches_its_baseline_and_a_save_reproduces_it(pytester, regression_run):
    saved = pytester.path / "again.json"
    result = regression_run(SELECTION, f"--securitynet-compare={BASELINE_FILE}", f"--securitynet-save-baseline={saved}")
    result.assert_outcomes(passed=9)
    result.stdout.fnmatch_lines(["*9 test(s) compared, 0 drifted*"])
    again = load_reference(saved)  # the baseline written by this run agrees with the committed one
    assert set(again.benchmarks) == {"task_performance.accuracy", "membership_inference.membership_inference"}
    committed = load_reference(BASELINE_FILE)
    for key, metrics in committed.rows.items():
        drifts = compare(again.rows[key], metrics, tolerances_for(committed, builtin_specs()[key[1]]))
        assert drifts and all(d.ok for d in drifts), key


@registered
@needs_shared(AKAMASTER_DIR, DATA_DIR)
@pytest.mark.slow
def test_a_model_with_a_shuffled_final_layer_fails_with_the_table(pytester, regression_run, tmp_path):
    # The same checkpoint with the rows of its final layer permuted: class i now answers for another class.
    checkpoint = torch.load(AKAMASTER_DIR / "resnet20-12fca82f.th", map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    order = torch.roll(torch.arange(10), 3)
    for key in ("module.linear.weight", "module.linear.bias"):
        state[key] = state[key][order].clone()
    torch.save({"state_dict": state}, tmp_path / "resnet20-shuffled.th")
    akamaster = (REPO / "catalog" / "models" / "akamaster.toml").read_text().split("[[models]]")[1]
    broken = (akamaster.replace('id = "cifar10-resnet20-akamaster"', 'id = "cifar10-resnet20-shuffled"')
              .replace('tags = ["akamaster"]', 'tags = ["broken"]'))
    broken = "\n".join(line for line in broken.splitlines() if not line.startswith(("source", "sha256")))
    catalog = tmp_path / "broken.toml"
    catalog.write_text('[[models]]\nsource = "file:resnet20-shuffled.th"\n' + broken)
    # The baseline says what ResNet-20 measured; the broken copy is held to the same numbers.
    doc = json.loads(BASELINE_FILE.read_text())
    for result_row in doc["results"]:
        result_row["model"] = "cifar10-resnet20-shuffled"
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(doc))

    # First the provenance says the weights are not the baseline's, before any number is compared.
    named = regression_run("shuffled and accuracy", f"--securitynet-catalog={catalog}",
                           f"--securitynet-compare={baseline}")
    named.assert_outcomes(failed=1)
    named.stdout.fnmatch_lines(["*cifar10-resnet20-shuffled task_performance.accuracy [[]default[]] was produced by "
                                "something else than its row in *baseline.json:",
                                "*weights of cifar10-resnet20-shuffled changed: sha256 595de7133e20.. -> *"])
    # Told to compare anyway, the numbers fail with the table, the provenance change on top.
    result = regression_run("shuffled and (accuracy or correctness)", f"--securitynet-catalog={catalog}",
                            f"--securitynet-compare={baseline}", "--securitynet-accept-provenance")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*provenance differs (accepted): weights of cifar10-resnet20-shuffled changed*",
        "*securitynet regression:*cifar10-resnet20-shuffled task_performance.accuracy [[]default[]]*",
        "*metric*measured*reference*delta*gap*tolerance*",
        "*test_accuracy*0.*±*0.8*±*DRIFT*",
    ])
    result.stdout.fnmatch_lines(["*2 test(s) compared, 2 drifted*"])
    rows = json.loads((pytester.path / "out.json").read_text())["results"]
    assert {r["outcome"] for r in rows} == {"failed"} and all("DRIFT" in r["message"] for r in rows)
