"""Known answers of the backdoor-detection benchmark (SecurityNet §3.3, §4.3, Table 1) on CPU.

A BadNets model (2x2 white patch bottom-right, target 7, 5% of the digits training split poisoned)
and its clean twin (same `demo_cnn` width 8, seed and schedule, unpoisoned data) are trained once
and handed to `benchmarks/test_backdoor_detection.py` as a user catalog (`file:` checkpoints). Run
end to end with the paper's Neural Cleanse settings, the benchmark must flag the BadNets model and
name label 7, leave the twin alone, save the reversed trigger as a PNG, and find no backdoor in
clean inputs with STRIP and NEO. STRIP and NEO must flag *triggered* inputs of the BadNets model,
checked here with the benchmark's own settings. The recipe is fixed: with another seed or poison
rate Neural Cleanse sometimes misses a BadNets model this small or flags its clean twin (see
docs/backdoor-detection.md).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from pytest_securitynet.attacks.backdoor import (
    neo,
    poison_dataset,
    predict_labels,
    strip,
    train_classifier,
    trigger_images_uint8,
)
from pytest_securitynet.harness.budget_rules import detector_inputs, nc_epochs
from pytest_securitynet.zoo.architectures import Normalized, build
from pytest_securitynet.zoo.datasets import ImageData, load_dataset

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
BENCHMARK_FILE = BENCHMARKS / "test_backdoor_detection.py"
TARGET, PATCH, POISON_FRACTION = 7, 2, 0.05
MODEL_SEED = 3
"""Seed of both models' initialisation and data order. With it Neural Cleanse finds the backdoor
(anomaly index 3.45, label 7; 3.42 before the fused Adam step of the batched problem) and the twin
is quiet (0.75); it gave the same figures on every install it was run on, which not all seeds did
(docs/backdoor-detection.md)."""
TRAIN = dict(epochs=30, lr=3e-3, batch_size=64, device="cpu", seed=MODEL_SEED)
WIDTH = 8
POISONED, TWIN = "digits-badnets-ka", "digits-clean-twin-ka"
ALL_DATASETS = "--securitynet-budget=backdoor.datasets=all"
INPUTS = 300
"""STRIP/NEO inputs in the end-to-end run (budget `backdoor.inputs`), to keep NEO short on CPU."""

CATALOG_ENTRY = """
[[models]]
id = "{id}"
dataset = "digits"
architecture = "democnn"
model_type = "cnn"
source = "file:{file}"
builder = "demo_cnn"
builder_args = {{ num_classes = 10, in_channels = 1, width = {width} }}
preprocess = {{ input_size = [1, 8, 8], mean = [0.5], std = [0.5] }}
annotations = {{ topic_category = "handwritten digits", training_set_size = 898, num_classes = 10, input_dims = "8x8x1", purpose = "{purpose}" }}
"""


@dataclass
class KnownModels:
    data: ImageData
    poisoned: nn.Module
    clean: nn.Module
    catalog: Path


pytestmark = pytest.mark.usefixtures("single_thread")


def _import(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    """The benchmark file as a module, for its helpers and settings."""
    module = _import("securitynet_benchmark_backdoor_detection", BENCHMARK_FILE)
    yield module
    sys.modules.pop("securitynet_benchmark_backdoor_detection", None)


def digits_cnn() -> nn.Module:
    """The registered `demo_cnn` builder, wrapped with the catalog entry's preprocessing."""
    torch.manual_seed(MODEL_SEED)
    return Normalized(build("demo_cnn", num_classes=10, in_channels=1, width=WIDTH), [0.5], [0.5], (8, 8))


@pytest.fixture(scope="module")
def models(harness, tmp_path_factory) -> KnownModels:
    """The BadNets model and its clean twin, trained on the digits training split and catalogued."""
    data = load_dataset(harness.catalog.dataset("digits"), harness.files)
    images, labels, _ = poison_dataset(data.train_images, data.train_labels, target_label=TARGET,
                                       poison_fraction=POISON_FRACTION, patch_size=PATCH, seed=0)
    poisoned = train_classifier(digits_cnn(), images, labels, **TRAIN)
    clean = train_classifier(digits_cnn(), data.train_images, data.train_labels, **TRAIN)
    folder = tmp_path_factory.mktemp("backdoor-catalog")
    entries = []
    for model_id, model, purpose in ((POISONED, poisoned, "security"), (TWIN, clean, "benchmark")):
        torch.save(model.net.state_dict(), folder / f"{model_id}.pt")
        entries.append(CATALOG_ENTRY.format(id=model_id, file=f"{model_id}.pt", width=WIDTH, purpose=purpose))
    (folder / "backdoor.toml").write_text("".join(entries), encoding="utf-8")
    return KnownModels(data, poisoned, clean, folder / "backdoor.toml")


def triggered(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Triggered copies of the images whose true label is not the target."""
    return trigger_images_uint8(images[labels != TARGET], PATCH)


def test_badnets_models_behave(models):
    """Both models are accurate; only the BadNets one answers the trigger with the target."""
    test_x, test_y = models.data.test_images, models.data.test_labels
    attack = triggered(test_x, test_y)
    for model in (models.poisoned, models.clean):
        assert (predict_labels(model, test_x, device="cpu") == test_y).float().mean() > 0.95
    assert (predict_labels(models.poisoned, attack, device="cpu") == TARGET).float().mean() > 0.95
    assert (predict_labels(models.clean, attack, device="cpu") == TARGET).float().mean() < 0.05


# --- end to end through the benchmark file ---------------------------------------------------


def run_benchmark(pytester, monkeypatch, cache_dir: Path, catalog: Path, *args: str, **budget: str):
    """benchmarks/test_backdoor_detection.py in a fresh session, `budget` as `backdoor.*` overrides;
    returns (result, rows)."""
    monkeypatch.delenv("SECURITYNET_DATASET", raising=False)
    monkeypatch.delenv("SECURITYNET_BUDGET", raising=False)
    args = (*args, *(f"--securitynet-budget=backdoor.{name}={value}" for name, value in budget.items()))
    shutil.copy(BENCHMARK_FILE, pytester.path / BENCHMARK_FILE.name)
    out = pytester.path / "results.json"
    result = pytester.runpytest("-p", "no:cacheprovider", BENCHMARK_FILE.name, "--securitynet-json", str(out),
                                "--securitynet-cache", str(cache_dir), "--securitynet-catalog", str(catalog),
                                "--securitynet-offline", "--securitynet-device", "cpu", *args)
    rows = json.loads(out.read_text(encoding="utf-8"))["results"] if out.exists() else []
    return result, {(row["model"], row["setting"]): row for row in rows}


def test_benchmark_flags_badnets_model_and_spares_its_twin(pytester, monkeypatch, cache_dir, models, bench):
    """The budget's defaults: Neural Cleanse for 20 epochs (the rule for 8x8 inputs; the paper's 50 on
    CIFAR-sized data), all 899 test images as its 1,000-sample budget."""
    result, rows = run_benchmark(pytester, monkeypatch, cache_dir, models.catalog, ALL_DATASETS,
                                 "-k", f"{POISONED} or {TWIN}", inputs=str(INPUTS))
    result.assert_outcomes(passed=6)
    assert set(rows) == {(m, d) for m in (POISONED, TWIN) for d in bench.DETECTORS}
    for row in rows.values():
        m = row["metrics"]
        assert (row["benchmark"], row["outcome"], m["detector"]) == (bench.BENCHMARK, "passed", row["setting"])
        assert m["dataset_family"] == "digits" and m["runtime_s"] > 0
        assert m["purpose"] == ("security" if row["model"] == POISONED else "benchmark")
        assert m["verdict"] == ("backdoored" if m["flagged"] else "clean")

    found, quiet = rows[(POISONED, "neural-cleanse")]["metrics"], rows[(TWIN, "neural-cleanse")]["metrics"]
    assert found["flagged"] and found["flagged_labels"][0] == found["suspect_label"] == found["trigger_label"] == TARGET
    assert found["score"] == found["anomaly_index"] > bench.ANOMALY_THRESHOLD
    assert (found["epochs"], found["n_samples"], found["mode"], found["scale"]) == (20, 899, "batched", "small")
    assert not quiet["flagged"] and quiet["flagged_labels"] == [] and quiet["anomaly_index"] < 1.5  # measured: 0.75
    for metrics in (found, quiet):
        png = pytester.path / metrics["trigger_png"]
        assert png.name == f"trigger-label{metrics['trigger_label']}.png"
        with Image.open(png) as image:
            assert image.size == (2 * 9 + 1, 10)  # mask and mask * pattern, 8x8 each, 1 px padding

    for model_id in (POISONED, TWIN):  # clean inputs: nothing to find
        strip_row, neo_row = rows[(model_id, "strip")]["metrics"], rows[(model_id, "neo")]["metrics"]
        assert not strip_row["flagged"] and strip_row["flagged_fraction"] < strip_row["threshold"]
        assert (strip_row["n_inputs"], strip_row["n_overlays"], strip_row["expected_frr"]) == (INPUTS, 10, 0.01)
        assert not neo_row["flagged"] and neo_row["n_confirmed"] == 0
        assert (neo_row["n_inputs"], neo_row["block_size"], neo_row["n_blocks"]) == (INPUTS, 2, 49)

    table = bench.false_positive_rates(rows.values())
    assert set(table) == {"digits"}
    assert {d: c["false_positive_rate"] for d, c in table["digits"].items()} == {
        "neural-cleanse": 0.5, "strip": 0.0, "neo": 0.0}
    assert table["digits"]["neural-cleanse"]["models"] == 2
    paper = bench.false_positive_rates(rows.values(), purpose="benchmark")  # the twin only
    assert {d: (c["models"], c["flagged"]) for d, c in paper["digits"].items()} == {
        "neural-cleanse": (1, 0), "strip": (1, 0), "neo": (1, 0)}


@pytest.fixture(scope="module")
def strip_inputs(models, bench):
    """The benchmark's split of the test split (scored / clean pool) and triggered scored inputs."""
    test_x, test_y = models.data.test_images, models.data.test_labels
    scored, pool = bench.split_scored_and_pool(test_x, 2000, seed=0)
    order = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(0))
    scored_labels = test_y[order[:len(scored)]]
    assert torch.equal(test_x[order[:len(scored)]], scored)
    return scored, pool, triggered(scored, scored_labels)


@pytest.mark.parametrize("which", ["poisoned", "clean"])
def test_strip_on_triggered_inputs(models, bench, strip_inputs, which):
    """The benchmark's settings (10 overlays, 1% FRR): triggered inputs keep the BadNets model certain."""
    scored, pool, attack = strip_inputs
    result = strip(getattr(models, which), scored, pool, n_inputs=len(scored), device="cpu", seed=0,
                   inputs_to_score=attack, **bench.STRIP_SETTINGS)
    if which == "poisoned":
        assert result.flagged and result.flagged_fraction > 0.9  # measured: 1.0
    else:
        assert result.flagged_fraction < 0.05  # measured: 0.02; the patch alone does not calm the twin


@pytest.mark.parametrize("which", ["poisoned", "clean"])
def test_neo_on_triggered_inputs(models, bench, which):
    """The benchmark's 2x2 block on 8x8 inputs finds and confirms the 2x2 patch (0.8 flip rule)."""
    test_x, test_y = models.data.test_images, models.data.test_labels
    result = neo(getattr(models, which), test_x, inputs_to_score=triggered(test_x, test_y), n_inputs=INPUTS,
                 block_size=bench.neo_block_size(test_x.shape[-2]), device="cpu", seed=0, **bench.NEO_SETTINGS)
    if which == "poisoned":
        assert result.flagged and result.confirmed_fraction > 0.9  # measured: 0.99
        found = result.trigger_positions[result.confirmed]
        assert (found == 8 - PATCH).all(dim=1).float().mean() > 0.9, "confirmed blocks sit on the patch"
    else:
        assert not result.flagged and result.n_confirmed == 0


# --- selection and the sequential reference ---------------------------------------------------


def test_other_datasets_are_skipped_unless_widened(pytester, monkeypatch, cache_dir, models):
    """digits is not a Table 1 dataset: without `backdoor.datasets=all` the rows say how to include it."""
    result, rows = run_benchmark(pytester, monkeypatch, cache_dir, models.catalog, "-k", POISONED)
    result.assert_outcomes(skipped=3)
    assert {model for model, _ in rows} == {POISONED}
    for row in rows.values():
        assert row["outcome"] == "skipped" and "--securitynet-budget backdoor.datasets=all" in row["message"]


def test_default_selection(harness, bench):
    """The paper's datasets and the demo models run by default; anything else needs `datasets=all`."""
    entries = harness.catalog.models
    assert bench.in_default_selection(entries["cifar10-resnet20-akamaster"], "cifar10")
    assert bench.in_default_selection(entries["demo-digits-cnn"], "digits")
    assert bench.PAPER_FAMILIES == ("cifar10", "svhn")
    assert [bench.neo_block_size(h) for h in (8, 16, 32, 224)] == [2, 2, 4, 28]
    assert bench.Budget() == bench.Budget(nc_epochs=0, nc_samples=1000, inputs=0, sequential=False,
                                             datasets="paper")
    assert (detector_inputs((1, 8, 8), 898), detector_inputs((3, 32, 32), 50_000)) == (200, 2000)
    assert (nc_epochs((1, 8, 8), 898), nc_epochs((3, 32, 32), 50_000), nc_epochs((1, 8, 8), 898, 7)) == (20, 50, 7)


def test_sequential_reference_agrees_and_is_timed(pytester, monkeypatch, cache_dir, models):
    """`backdoor.sequential=true`: the one-label-at-a-time run finds the same masks; the row has the ratio."""
    result, rows = run_benchmark(pytester, monkeypatch, cache_dir, models.catalog, ALL_DATASETS,
                                 "-k", f"{POISONED} and neural-cleanse", nc_epochs="3", nc_samples="64",
                                 sequential="true")
    result.assert_outcomes(passed=1)
    m = rows[(POISONED, "neural-cleanse")]["metrics"]
    assert (m["epochs"], m["n_samples"]) == (3, 64)
    assert m["max_mask_difference"] < 1e-4
    assert m["sequential_suspect_label"] == m["suspect_label"]
    assert m["speedup"] == pytest.approx(m["sequential_runtime_s"] / m["runtime_s"])


def test_false_positive_rates_known_answer(bench, tmp_path, capsys):
    def row(family, detector, flagged, outcome="passed", runtime=1.0):
        return {"benchmark": bench.BENCHMARK, "outcome": outcome,
                "metrics": {"dataset_family": family, "detector": detector, "flagged": flagged, "runtime_s": runtime,
                            "purpose": "benchmark"}}

    rows = [row("cifar10", "neural-cleanse", True, runtime=3.0), row("cifar10", "neural-cleanse", False),
            row("cifar10", "neural-cleanse", False), row("cifar10", "neural-cleanse", True, outcome="failed"),
            row("svhn", "strip", False), {"benchmark": "task_performance.accuracy", "outcome": "passed", "metrics": {}}]
    table = bench.false_positive_rates(rows)
    assert table == {
        "cifar10": {"neural-cleanse": {"models": 3, "flagged": 1, "false_positive_rate": pytest.approx(1 / 3),
                                       "mean_runtime_s": pytest.approx(5 / 3)}},
        "svhn": {"strip": {"models": 1, "flagged": 0, "false_positive_rate": 0.0, "mean_runtime_s": 1.0}},
    }
    assert bench.false_positive_rates(rows, purpose="security") == {}
    (tmp_path / "results.json").write_text(json.dumps({"results": rows}), encoding="utf-8")
    bench.main([str(tmp_path / "results.json")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["dataset", "detector", "models", "flagged", "FPR", "mean", "runtime"]
    assert lines[1].split() == ["cifar10", "neural-cleanse", "3", "1", "33.3%", "1.7s"]
    assert lines[2].split() == ["svhn", "strip", "1", "0", "0.0%", "1.0s"]
