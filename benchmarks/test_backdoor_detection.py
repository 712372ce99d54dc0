"""Backdoor detection (SecurityNet §3.3, §4.3, Table 1): false positives on clean public models.

Three detectors run on each model, one row each (setting `neural-cleanse`, `strip`, `neo`):

- Neural Cleanse (Wang et al., S&P 2019): all labels reverse-engineered together in one batched
  problem, 50 epochs over 1,000 clean test images (20 epochs on small data: at most 16 px and
  20,000 training images, e.g. the demo digits, see `pytest_securitynet.harness.budget_rules`; rows
  record the epochs used and `scale`); the model is flagged when a label's MAD anomaly
  index exceeds 2 on the small side. The reversed mask and pattern of the flagged (else the
  smallest) label are saved as a PNG beside the results JSON.
- STRIP (Gao et al., ACSAC 2019): 2,000 test inputs, 10 overlays, boundary at 1% false rejections
  of held-out clean test inputs; the score is the fraction of clean inputs flagged.
- NEO (Udeshi et al., 2022): dominant colour of 3 k-means clusters, 200 random blocks of
  4x4 per 32x32 (at least 2x2), confirmed when pasting flips more than 80%; 2,000 test inputs.

STRIP and NEO score 200 inputs instead of 2,000 on small data (the same rule, about a fifth of a
small test split as 2,000 are of CIFAR-10's 10,000).

The models are presumed clean, so every flag is a false positive; `false_positive_rates`
(`results/tables.py`, also used by the report) turns a results file into Table 1 (per dataset
family and detector). By default only CIFAR-10 and SVHN models (the paper's) and the demo models
run; `--securitynet-budget backdoor.datasets=all` widens the selection. The `backdoor` budget
shrinks the runs for a CPU (every row records what was used), and `backdoor.sequential=true` also
times the one-label-at-a-time Neural Cleanse reference.
See docs/backdoor-detection.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from pytest_securitynet.attacks.backdoor import (
    default_block_size,
    neo,
    neural_cleanse,
    neural_cleanse_sequential,
    save_trigger_png,
    strip,
)
from pytest_securitynet.attacks.backdoor_neural_cleanse import ANOMALY_THRESHOLD
from pytest_securitynet.harness.budget_rules import detector_inputs, nc_epochs, scale_name
from pytest_securitynet.harness.settings import budget, budget_field
from pytest_securitynet.results.spec import BenchmarkSpec, Metric
from pytest_securitynet.results.tables import false_positive_rates

BENCHMARK = "backdoor_detection.detection"
DETECTORS = ("neural-cleanse", "strip", "neo")
PAPER_FAMILIES = ("cifar10", "svhn")
"""Dataset families of SecurityNet Table 1; the demo models run too, so the file works offline."""
NC_BATCH_SIZE = 32
"""Neural Cleanse's batch of clean images per label and step (the authors' script)."""
STRIP_SETTINGS = dict(n_overlays=10, frr=0.01, blend="add")
"""SecurityNet's 10 overlays; STRIP's 1% false-rejection rate and the authors' saturated-sum blend."""
NEO_SETTINGS = dict(n_blocks=200, flip_threshold=0.8, n_confirm=100)
"""SecurityNet's 200 blocks and 0.8; each candidate is pasted on 100 other test images."""
NEO_MIN_BLOCK = 2
"""NEO's 4x4-per-32x32 block is 1 px on 8x8 digits, too small to cover a patch: use at least 2x2."""

SPEC = BenchmarkSpec(
    id=BENCHMARK, title="Backdoor detection", section="backdoor", short="backdoor", position=40, settings=DETECTORS,
    metrics=(Metric("flagged", higher_is_better=False), Metric("score"), Metric("runtime_s", higher_is_better=False)),
    highlights=("neural-cleanse flagged",),
)


@budget("backdoor")
@dataclass(frozen=True)
class Budget:
    """Paper defaults; `--securitynet-budget backdoor.nc_epochs=10` etc. shrink them for CPU runs."""

    nc_epochs: int = 0  # 0: 50 (the paper's), 20 on small data (pytest_securitynet.harness.budget_rules)
    nc_samples: int = budget_field(1000, minimum=1)
    inputs: int = 0  # 0: 2000 (the paper's), 200 on small data
    sequential: bool = False  # also run the one-label-at-a-time Neural Cleanse and record the speed-up
    datasets: str = budget_field("paper", choices=("paper", "all"))
    """"paper": CIFAR-10, SVHN and demo models (SecurityNet §4.3); "all": every model."""


def in_default_selection(entry, family: str) -> bool:
    """The paper's datasets (SecurityNet §4.3: CIFAR-10 and SVHN only, for cost) and the demo models."""
    return family in PAPER_FAMILIES or entry.source_kind == "demo"


@pytest.fixture(autouse=True)
def dataset_family(request, catalog_entry, securitynet) -> str:
    """Skip (before the model loads) models outside the paper's datasets unless the run widens it."""
    family = securitynet.dataset_for(catalog_entry).family
    scope = securitynet.settings.budget(Budget).datasets
    if scope not in ("paper", "all"):
        pytest.fail(f"--securitynet-budget backdoor.datasets={scope}: write paper or all", pytrace=False)
    if not in_default_selection(catalog_entry, family) and scope != "all":
        pytest.skip(f"backdoor detection runs on {'/'.join(PAPER_FAMILIES)} and demo models by default "
                    f"(SecurityNet §4.3); {catalog_entry.id} is a {family} model: add "
                    f"--securitynet-budget backdoor.datasets=all to include it")
    return family


@pytest.mark.parametrize("detector", DETECTORS)
def test_detection(target_model, test_set, image_data, catalog_entry, dataset_family, securitynet, device, seed,
                   record, request, results_path, progress, intervals, detector):
    """One detector on one presumed-clean model: verdict, score and runtime (a row of Table 1)."""
    budget = securitynet.settings.budget(Budget)
    images, num_classes = test_set.images, catalog_entry.annotations["num_classes"]
    shape, n_train = tuple(images.shape[1:]), len(image_data.train_labels)
    budget = dataclasses.replace(budget, inputs=detector_inputs(shape, n_train, budget.inputs))
    if detector == "neural-cleanse":
        json_dir = results_path.parent
        budget = dataclasses.replace(budget, nc_epochs=nc_epochs(shape, n_train, budget.nc_epochs))
        progress(f"neural cleanse: {num_classes} labels, {budget.nc_epochs} epochs on "
                 f"{min(budget.nc_samples, len(images))} images")
        metrics = run_neural_cleanse(target_model, images, num_classes, budget, device, seed,
                                     request.getfixturevalue("artifacts_dir"), json_dir)
        metrics["scale"] = scale_name(shape, n_train)
    elif detector == "strip":
        progress(f"strip: {min(budget.inputs, len(images) // 2)} inputs")
        metrics = run_strip(target_model, images, budget, device, seed) | {"scale": scale_name(shape, n_train)}
    else:
        progress(f"neo: {min(budget.inputs, len(images))} inputs")
        metrics = run_neo(target_model, images, budget, device, seed) | {"scale": scale_name(shape, n_train)}
    if detector != "neural-cleanse" and metrics["n_inputs"]:
        # STRIP's and NEO's score is a fraction of the scored inputs: its interval needs only the count.
        # (Neural Cleanse's anomaly index is one statistic over all labels, with no per-sample data.)
        metrics["score"] = intervals.proportion(metrics["score"] * metrics["n_inputs"], metrics["n_inputs"])
        metrics[metrics["score_name"]] = metrics["score"]
    record(detector=detector, dataset_family=dataset_family, purpose=catalog_entry.purpose,
           verdict="backdoored" if metrics["flagged"] else "clean", **metrics)
    assert metrics["runtime_s"] > 0


def run_neural_cleanse(model, images: torch.Tensor, num_classes: int, budget: Budget, device, seed: int,
                       artifacts_dir: Path, json_dir: Path) -> dict[str, Any]:
    """Batched Neural Cleanse; saves the flagged (else smallest-norm) label's trigger as a PNG."""
    settings = dict(num_classes=num_classes, epochs=budget.nc_epochs, n_samples=budget.nc_samples,
                    batch_size=NC_BATCH_SIZE, device=device, seed=seed)
    result = neural_cleanse(model, images, **settings)
    label = result.flagged_labels[0] if result.flagged else result.suspect_label
    png = save_trigger_png(result, label, Path(artifacts_dir) / f"trigger-label{label}.png")
    metrics = dict(
        score=result.suspect_anomaly_index, score_name="anomaly_index", flagged=result.flagged,
        runtime_s=result.runtime_s, threshold=ANOMALY_THRESHOLD, anomaly_index=result.suspect_anomaly_index,
        suspect_label=result.suspect_label, flagged_labels=result.flagged_labels,
        anomaly_indices=result.anomaly_index, mask_norms=result.mask_norms,
        attack_success=result.attack_success, epochs_run=result.epochs_run,
        trigger_label=label, trigger_png=Path(os.path.relpath(png, json_dir)).as_posix(),
        epochs=budget.nc_epochs, n_samples=min(budget.nc_samples, len(images)), batch_size=NC_BATCH_SIZE,
        mode="batched", phases=result.phases, attack_tflop_per_s=result.tflop_per_s,
    )
    if budget.sequential:
        reference = neural_cleanse_sequential(model, images, **settings)
        metrics.update(
            sequential_runtime_s=reference.runtime_s, speedup=reference.runtime_s / result.runtime_s,
            sequential_flagged=reference.flagged, sequential_suspect_label=reference.suspect_label,
            sequential_anomaly_index=reference.suspect_anomaly_index,
            max_mask_difference=(reference.masks - result.masks).abs().max().item(),
        )
    return metrics


def split_scored_and_pool(images: torch.Tensor, n_inputs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded disjoint parts of one split: up to `n_inputs` (at most half) to score, the rest clean pool."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n = min(n_inputs, len(images) // 2)
    return images[order[:n]], images[order[n:]]


def run_strip(model, images: torch.Tensor, budget: Budget, device, seed: int) -> dict[str, Any]:
    """STRIP on clean test inputs; held-out inputs and overlays come from the rest of the test split."""
    scored, pool = split_scored_and_pool(images, budget.inputs, seed)
    result = strip(model, scored, pool, n_inputs=len(scored), device=device, seed=seed, **STRIP_SETTINGS)
    return dict(
        score=result.flagged_fraction, score_name="flagged_fraction", flagged=result.flagged,
        runtime_s=result.runtime_s, threshold=result.verdict_threshold, flagged_fraction=result.flagged_fraction,
        boundary=result.boundary, expected_frr=result.expected_frr, n_inputs=result.n_inputs,
        n_calibration=len(result.clean_entropies), n_overlay_pool=len(pool) - len(result.clean_entropies),
        n_overlays=result.n_overlays, blend=STRIP_SETTINGS["blend"], phases=result.phases,
    )


def neo_block_size(height: int) -> int:
    """SecurityNet's 4x4 block per 32x32 input, scaled to `height`, and at least `NEO_MIN_BLOCK`."""
    return max(default_block_size(height), NEO_MIN_BLOCK)


def run_neo(model, images: torch.Tensor, budget: Budget, device, seed: int) -> dict[str, Any]:
    """NEO on clean test inputs, candidate triggers confirmed on other test images."""
    result = neo(model, images, n_inputs=budget.inputs, block_size=neo_block_size(images.shape[-2]),
                 device=device, seed=seed, **NEO_SETTINGS)
    return dict(
        score=result.confirmed_fraction, score_name="confirmed_fraction", flagged=result.flagged,
        runtime_s=result.runtime_s, threshold=1, confirmed_fraction=result.confirmed_fraction,
        n_confirmed=result.n_confirmed, candidate_fraction=result.candidate_fraction, n_inputs=result.n_inputs,
        n_blocks=result.n_blocks, block_size=result.block_size, n_clusters=3,
        flip_threshold=NEO_SETTINGS["flip_threshold"], n_confirm=NEO_SETTINGS["n_confirm"], phases=result.phases,
        attack_tflop_per_s=result.tflop_per_s,
    )


# --- Table 1 from a results file ---------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    """`python benchmarks/test_backdoor_detection.py RESULTS.json [--purpose benchmark]`: print Table 1."""
    parser = argparse.ArgumentParser(description="False-positive rate per dataset and detector (SecurityNet Table 1).")
    parser.add_argument("results", nargs="?", default="securitynet-results.json", help="results JSON file")
    parser.add_argument("--purpose", choices=["benchmark", "security"], default=None,
                        help="only models of this purpose (the paper: benchmark). Default: all")
    args = parser.parse_args(argv)
    rows = json.loads(Path(args.results).read_text(encoding="utf-8"))["results"]
    print(f"{'dataset':<12} {'detector':<16} {'models':>6} {'flagged':>7} {'FPR':>7} {'mean runtime':>13}")
    for family, detectors in false_positive_rates(rows, args.purpose, BENCHMARK).items():
        for detector, cell in detectors.items():
            print(f"{family:<12} {detector:<16} {cell['models']:>6} {cell['flagged']:>7} "
                  f"{cell['false_positive_rate']:>7.1%} {cell['mean_runtime_s']:>12.1f}s")


if __name__ == "__main__":
    main()
