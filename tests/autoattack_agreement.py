"""Measures what docs/evasion.md ("AutoAttack") reports: robust accuracy from the harness's cascade
(`run_autoattack`) and from pyautoattack's own `run_standard_evaluation` on the same points, seed and
radius, with the time each took; and the adversarially trained digits model against its standard twin.

    SECURITYNET_MIRROR=../shared/models/akamaster-cifar10:../shared/data \\
      python tests/autoattack_agreement.py --points 100 [--cifar-points 10]

Not a test module (pytest collects test_*.py only): it runs minutes, not seconds.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from pytest_securitynet.attacks.autoattack import reference_robust_accuracy, run_autoattack
from pytest_securitynet.harness.harness import Harness
from pytest_securitynet.harness.settings import Settings

ROBUST_DIGITS = Path(__file__).resolve().parents[1] / "examples" / "robust-digits.toml"
DIGITS = ("demo-digits-cnn", "digits-cnn-pgd-at", "demo-digits-rbf-overfit")


def measure(harness: Harness, model_id: str, n: int, eps: float, norm: str = "Linf") -> None:
    loaded = harness.loaded(harness.catalog.model(model_id))
    test = loaded.sets["test"]
    images, labels = test.images[:n], test.labels[:n]
    start = time.perf_counter()
    ours = run_autoattack(loaded.model, images, labels, norm=norm, eps=eps, seed=0)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = reference_robust_accuracy(loaded.model, images, labels, norm=norm, eps=eps, seed=0)
    reference_s = time.perf_counter() - start
    after = " ".join(f"{k}={v:.3f}" for k, v in ours.robust_accuracy_after.items())
    print(f"| {model_id} | {norm} {eps:.4g} | {len(labels)} | {ours.clean_accuracy:.3f} | {ours.robust_accuracy:.3f} "
          f"| {reference:.3f} | {abs(ours.robust_accuracy - reference):.3f} | {after} | {ours_s:.0f} s / {reference_s:.0f} s "
          f"| {'; '.join(ours.unreliable_reasons) or 'no'} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--cifar-points", type=int, default=0, help="also the pyautoattack ResNet-18 at 8/255")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mirrors = [Path(p) for p in os.environ.get("SECURITYNET_MIRROR", "").split(":") if p]
    harness = Harness(Settings(catalogs=[str(ROBUST_DIGITS)], mirrors=mirrors,
                               dataset_overrides={"cifar10": "cifar10-jpeg"}), lambda: torch.device("cpu"))
    print("| model | radius | points | clean | robust (cascade) | robust (pyautoattack) | difference "
          "| cascade, after each attack | time cascade / pyautoattack | unreliable |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for eps in (2 / 255, 0.1):
        for model_id in DIGITS:
            measure(harness, model_id, args.points, eps)
    if args.cifar_points:
        torch.set_num_threads(2)
        measure(harness, "cifar10-resnet18-fra31", args.cifar_points, 8 / 255)


if __name__ == "__main__":
    main()
