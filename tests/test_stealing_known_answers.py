"""Known answers for the model-stealing benchmark (SecurityNet §3.1, Appendix B) on the demo catalog.

With the full budget (half the training split, 449 queries) the surrogate the budget rule picks
for 8x8 digits (a small CNN, 20 epochs, `pytest_securitynet.harness.budget_rules`) agrees with
`demo-digits-cnn` on more than 90% of the test split; with 1% of the training split (9 queries) it
stays far below. The full-budget case runs the benchmark file itself, end to end, with its defaults.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from pytest_securitynet.attacks.stealing import evaluate_surrogate, steal
from pytest_securitynet.harness.budget_rules import surrogate_plan
from pytest_securitynet.harness.target import BlackBoxTarget

from conftest import DATA_DIR, needs_shared

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "test_model_stealing.py"
DEMO = "demo-digits-cnn"


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def bench():
    """The benchmark file as a module, for its helpers (registered while in use, as dataclasses need)."""
    name = "securitynet_benchmark_model_stealing"
    spec = importlib.util.spec_from_file_location(name, BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(name, None)


def run_benchmark(pytester, monkeypatch, cache_dir: Path, keyword: str, epochs: int, *args: str):
    """Run benchmarks/test_model_stealing.py in a fresh pytest session; returns (result, rows by setting).
    `epochs` 0 keeps the budget's rule."""
    monkeypatch.delenv("SECURITYNET_BUDGET", raising=False)
    monkeypatch.delenv("SECURITYNET_DATASET", raising=False)
    pytester.makepyfile(test_model_stealing=BENCHMARK.read_text(encoding="utf-8"))
    out = pytester.path / "results.json"
    result = pytester.runpytest("-p", "no:cacheprovider", "-k", keyword, "--securitynet-json", str(out),
                                "--securitynet-cache", str(cache_dir), "--securitynet-offline",
                                "--securitynet-device", "cpu", f"--securitynet-budget=stealing.epochs={epochs}",
                                "--securitynet-heavy", *args)
    rows = json.loads(out.read_text(encoding="utf-8"))["results"]
    return result, {row["setting"]: row for row in rows}


def test_full_budget_agreement_above_0_9(pytester, monkeypatch, cache_dir):
    result, rows = run_benchmark(pytester, monkeypatch, cache_dir, f"{DEMO} and budget50", 0)
    result.assert_outcomes(passed=1)
    row = rows["budget50"]
    assert (row["model"], row["benchmark"], row["outcome"]) == (DEMO, "model_stealing.model_stealing", "passed")
    m = row["metrics"]
    assert m["queries"] == m["budget_queries"] == m["auxiliary_size"] == 449  # half of 898, one query each
    assert (m["surrogate"], m["epochs"], m["label_only"], m["scale"]) == ("small-cnn", 20, False, "small")
    assert m["batch_size"] == 32 and m["lr"] == 0.01  # the paper's rate, not rescaled to the small batch
    assert m["query_source"] == "digits"
    assert m["target_accuracy"] > 0.95
    assert m["agreement"] > 0.9
    assert m["attack_accuracy"] > 0.85
    assert m["train_time_s"] > 0 and m["train_tflop"] > 0


def test_one_percent_budget_scores_clearly_lower(harness):
    """9 queries (1% of the training split) with the benchmark's defaults: far below the 0.9 the
    full budget clears in the test above."""
    loaded = harness.loaded(harness.catalog.model(DEMO))
    auxiliary, test = loaded.sets["auxiliary"], loaded.sets["test"]
    few = auxiliary.subset(torch.randperm(len(auxiliary), generator=torch.Generator().manual_seed(0))[:9])
    target = BlackBoxTarget(loaded.posteriors)
    plan = surrogate_plan(tuple(test.images.shape[1:]), len(loaded.data.train_labels))
    surrogate, info = steal(few.images, target.posteriors(few), num_classes=10, lr=0.01, seed=0, **plan.steal_kwargs())
    scores = evaluate_surrogate(surrogate, loaded.model, test.images, test.labels)
    assert target.queries == info["queries"] == 9
    assert scores["target_accuracy"] > 0.95
    assert scores["agreement"] < 0.6


def test_every_setting_records_its_row(pytester, monkeypatch, cache_dir):
    """Wiring only: 40 auxiliary samples (--securitynet-limit) and one epoch per setting (the heavy one too)."""
    result, rows = run_benchmark(pytester, monkeypatch, cache_dir, f"{DEMO} and not ood", 1,
                                 "--securitynet-limit", "40")
    result.assert_outcomes(passed=5)
    expected = {  # setting: (queries, surrogate, label_only)
        "budget10": (8, "small-cnn", False), "budget25": (20, "small-cnn", False),
        "budget50": (40, "small-cnn", False), "wrn50_2": (40, "wrn50_2", False),
        "label-only": (40, "small-cnn", True),
    }
    assert set(rows) == set(expected)
    for setting, (queries, surrogate, label_only) in expected.items():
        m = rows[setting]["metrics"]
        assert (m["queries"], m["surrogate"], m["label_only"], m["epochs"]) == (queries, surrogate, label_only, 1)
        assert m["auxiliary_size"] == 40 and m["n_test"] == 40 and m["n_train"] == 898
        assert m["budget_queries"] == round(m["budget_fraction"] * 898)
        assert 0 <= m["agreement"] <= 1 and 0 <= m["attack_accuracy"] <= 1
    assert rows["budget10"]["metrics"]["budget_queries"] == 90


@needs_shared(DATA_DIR / "cifar10-jpeg.tar.gz")
def test_out_of_distribution_queries_come_from_another_dataset(pytester, monkeypatch, cache_dir):
    """A digits target is queried with CIFAR-10 images turned into 8x8 grey images."""
    monkeypatch.setenv("SECURITYNET_MIRROR", str(DATA_DIR))
    result, rows = run_benchmark(pytester, monkeypatch, cache_dir, f"{DEMO} and ood", 1,
                                 "--securitynet-limit", "40")
    result.assert_outcomes(passed=1)
    m = rows["ood"]["metrics"]
    assert (m["query_source"], m["queries"], m["surrogate"]) == ("cifar10-jpeg", 40, "small-cnn")


def test_out_of_distribution_setting_skips_when_its_dataset_is_absent(pytester, monkeypatch, cache_dir, tmp_path):
    """Offline with no CIFAR-10 copy anywhere: the setting skips naming the file, nothing fails."""
    monkeypatch.delenv("SECURITYNET_MIRROR", raising=False)
    fresh = tmp_path / "cache"
    if (cache_dir / "weights").is_dir():  # reuse the trained demo model, not the datasets
        shutil.copytree(cache_dir / "weights", fresh / "weights")
    result, rows = run_benchmark(pytester, monkeypatch, fresh, f"{DEMO} and ood", 1, "--securitynet-limit", "40", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*out-of-distribution dataset cifar10-jpeg is not available*cifar10-jpeg.tar.gz*"])
    assert rows["ood"]["outcome"] == "skipped"


def test_to_input_converts_channels_and_size(bench):
    red = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    red[:, 0] = 255
    grey = bench.to_input(red, (1, 8, 8), torch.device("cpu"))
    assert grey.dtype == torch.uint8 and grey.shape == (2, 1, 8, 8)
    assert torch.all(grey == round(255 * 0.299))  # BT.601 luma of pure red; a flat image stays flat
    digits = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    rgb = bench.to_input(digits, (3, 8, 8), torch.device("cpu"), chunk=2)
    assert rgb.shape == (3, 3, 8, 8) and all(torch.equal(rgb[:, c:c + 1], digits) for c in range(3))
    assert bench.to_input(digits, (3, 32, 32), torch.device("cpu")).shape == (3, 3, 32, 32)
    with pytest.raises(ValueError):
        bench.to_input(torch.zeros(1, 2, 8, 8, dtype=torch.uint8), (3, 8, 8), torch.device("cpu"))


def test_budgets_are_seeded_nested_subsets(bench):
    small, large = bench.seeded_positions(100, 10, seed=3), bench.seeded_positions(100, 50, seed=3)
    assert len(small) == 10 and len(set(small.tolist())) == 10 and torch.equal(small, small.sort().values)
    assert set(small.tolist()) <= set(large.tolist())
    assert torch.equal(small, bench.seeded_positions(100, 10, seed=3))
    assert not torch.equal(small, bench.seeded_positions(100, 10, seed=4))
    assert [s.id for s in bench.SETTINGS] == ["budget10", "budget25", "budget50", "ood", "wrn50_2", "label-only"]
    assert (bench.LR, bench.MOMENTUM, bench.AUXILIARY_FRACTION) == (0.01, 0.9, 0.5)
