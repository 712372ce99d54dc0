"""Known answers for membership inference on CIFAR-sized models the project makes itself.

`make` trains two CIFAR ResNet-20s on seeded subsets of the training split of CIFAR-10 (the shared
JPEG copy, `cifar10-jpeg`), reproducibly for a seed on the CPU, and writes, into `--out`: their
weights (`<id>.pt`, a bare state dict, not committed), their members files (`<id>-members.txt`,
archive names) and a catalog file (`known-models.toml`) naming both:

- `known-resnet20-overfit`: `--overfit-members` images (default 2,500), no augmentation, SGD
  lr 0.1 cosine for `--overfit-epochs` (default 100): it memorises them (train accuracy 1.0).
- `known-resnet20-general`: `--general-members` images (default 25,000), crop and flip, weight
  decay 5e-4, `--general-epochs` (default 40): it generalises (a small train-test gap).

`check` reads the results JSON of a benchmark run on both and tests the known answers: on the
overfit model RMIA (offline and online) reaches `--factor` (default 2) times the TPR at 1% FPR of
the best of the paper's ten attacks; on the generalising one it stays within `--tolerance` (default
0.03) of 1%. It prints each figure with its bootstrap interval and exits 1 if a check fails.

GPU (the documented default budget; from the repository root, shared data at /work/shared):

    python3 scripts/membership_known_models.py make --out /tmp/known --device cuda \\
        --mirror /work/shared/data --cache /tmp/sncache
    SECURITYNET_CACHE=/tmp/sncache SECURITYNET_MIRROR=/work/shared/data python3 -m pytest \\
        benchmarks/test_membership_inference.py --securitynet-catalog /tmp/known/known-models.toml \\
        -k "known-resnet20 and not logp and not logit" --securitynet-device cuda:0 \\
        --securitynet-json /tmp/known/results.json
    python3 scripts/membership_known_models.py check /tmp/known/results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

OVERFIT, GENERAL = "known-resnet20-overfit", "known-resnet20-general"
DATASET = "cifar10-jpeg"
PAPER_ATTACKS = ("correctness", "confidence-global", "confidence-classwise", "entropy-global", "entropy-classwise",
                 "mentropy-global", "mentropy-classwise", "loss", "mlp-full", "mlp-top3")
RMIA = ("rmia-offline", "rmia-online")

ENTRY = """
[[models]]
id = "{id}"
dataset = "cifar10-jpeg"
architecture = "resnet20"
model_type = "resnet"
source = "file:{weights}"
builder = "cifar_resnet"
builder_args = {{ depth = 20, num_classes = 10 }}
members_file = "{id}-members.txt"
tags = ["known-answer"]
preprocess = {{ input_size = [3, 32, 32], mean = [0.4914, 0.4822, 0.4465], std = [0.247, 0.243, 0.261] }}
[models.annotations]
task_type = "classification"
topic_category = "natural scenery"
class_granularity = "coarse"
training_set_size = {n}
num_classes = 10
input_dims = "32x32x3"
purpose = "benchmark"
"""


def recipes(args) -> dict[str, dict]:
    """Per model: members drawn, epochs, augmentation (the seed is the model's own stream)."""
    return {OVERFIT: dict(members=args.overfit_members, epochs=args.overfit_epochs, augment=False, stream=1),
            GENERAL: dict(members=args.general_members, epochs=args.general_epochs, augment=True, stream=2)}


def make(args) -> None:
    from pytest_securitynet.attacks.training import train_classifier_fast
    from pytest_securitynet.catalog.entries import BUILTIN_CATALOG, load_catalog
    from pytest_securitynet.zoo.architectures import Normalized, cifar_resnet
    from pytest_securitynet.zoo.datasets import archive_split_names, load_dataset
    from pytest_securitynet.zoo.store import FileStore

    store = FileStore(cache_dir=Path(args.cache), mirrors=[Path(m) for m in args.mirror], offline=True)
    dataset = load_catalog([BUILTIN_CATALOG]).dataset(DATASET)
    data = load_dataset(dataset, store)
    names = archive_split_names(dataset, store, "train")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    catalog = ["# Written by scripts/membership_known_models.py make; weights beside this file."]
    for model_id, recipe in recipes(args).items():
        gen = torch.Generator().manual_seed(args.seed * 1000 + recipe["stream"])
        members = torch.randperm(len(data.train_labels), generator=gen)[:recipe["members"]].sort().values
        torch.manual_seed(args.seed * 1000 + recipe["stream"])
        net = cifar_resnet(20, 10)
        model = Normalized(net, [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261])
        start = time.perf_counter()
        model, _ = train_classifier_fast(model, data.train_images[members], data.train_labels[members],
                                         epochs=recipe["epochs"], lr=0.1, batch_size=128, scale_lr=False,
                                         device=args.device, seed=args.seed, weight_decay=5e-4,
                                         augment=recipe["augment"])
        seconds = time.perf_counter() - start
        weights = (out / f"{model_id}.pt").resolve()
        torch.save({k: v.cpu() for k, v in net.state_dict().items()}, weights)
        (out / f"{model_id}-members.txt").write_text(
            f"# {len(members)} training images of {model_id}\n" + "\n".join(names[i] for i in members) + "\n")
        catalog.append(ENTRY.format(id=model_id, weights=weights, n=len(members)))
        train_acc = accuracy(model, data.train_images[members], data.train_labels[members], args.device)
        test_acc = accuracy(model, data.test_images, data.test_labels, args.device)
        print(json.dumps({"model": model_id, **recipe, "train_accuracy": round(train_acc, 4),
                          "test_accuracy": round(test_acc, 4), "train_s": round(seconds, 1)}), flush=True)
    (out / "known-models.toml").write_text("\n".join(catalog))


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, device: str) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), 1000):
            x = images[start:start + 1000].to(device).float().div(255)
            correct += int((model(x).argmax(1).cpu() == labels[start:start + 1000]).sum())
    return correct / len(images)


def value(metrics: dict, name: str) -> tuple[float, str]:
    """A metric's value and its bootstrap interval as text (`metrics["intervals"][name]`, results/intervals.py)."""
    interval = metrics.get("intervals", {}).get(name)
    text = f"[{interval['low']:.4f}, {interval['high']:.4f}]" if interval else ""
    return float(metrics[name]), text


def check(rows: list[dict], factor: float = 2.0, tolerance: float = 0.03) -> list[tuple[str, bool, str]]:
    """The known-answer checks on benchmark rows: (what, held, figures) per check."""
    tpr = {}
    for row in rows:
        if row["model"] in (OVERFIT, GENERAL) and row.get("outcome", "passed") == "passed":
            tpr[row["model"], row["setting"]] = value(row["metrics"], "tpr_at_fpr_1e-2")
    results = []
    paper = {name: tpr[OVERFIT, name] for name in PAPER_ATTACKS if (OVERFIT, name) in tpr}
    if paper:
        best_name = max(paper, key=lambda name: paper[name][0])
        best = paper[best_name][0]
        for attack in RMIA:
            if (OVERFIT, attack) in tpr:
                got, interval = tpr[OVERFIT, attack]
                results.append((f"{OVERFIT} {attack} >= {factor} x {best_name}", got >= factor * best,
                                f"{got:.4f} {interval} against {factor} x {best:.4f}"))
    for attack in RMIA:
        if (GENERAL, attack) in tpr:
            got, interval = tpr[GENERAL, attack]
            results.append((f"{GENERAL} {attack} within {tolerance} of 0.01", abs(got - 0.01) <= tolerance,
                            f"{got:.4f} {interval}"))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    made = sub.add_parser("make", help="train both models and write weights, members files and a catalog")
    made.add_argument("--out", required=True)
    made.add_argument("--cache", required=True, help="the securitynet cache directory (decoded dataset)")
    made.add_argument("--mirror", action="append", default=[], help="directory holding cifar10-jpeg.tar.gz")
    made.add_argument("--device", default="cpu")
    made.add_argument("--seed", type=int, default=0)
    made.add_argument("--overfit-members", type=int, default=2500)
    made.add_argument("--overfit-epochs", type=int, default=100)
    made.add_argument("--general-members", type=int, default=25000)
    made.add_argument("--general-epochs", type=int, default=40)
    checked = sub.add_parser("check", help="test the known answers on a results JSON")
    checked.add_argument("results")
    checked.add_argument("--factor", type=float, default=2.0)
    checked.add_argument("--tolerance", type=float, default=0.03)
    args = parser.parse_args(argv)
    if args.command == "make":
        make(args)
        return 0
    results = check(json.loads(Path(args.results).read_text())["results"], args.factor, args.tolerance)
    if not results:
        print(f"{args.results}: no rows of {OVERFIT} or {GENERAL} with RMIA and the paper's attacks", file=sys.stderr)
        return 1
    for what, held, figures in results:
        print(f"{'ok  ' if held else 'FAIL'} {what}: {figures}")
    return 0 if all(held for _, held, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
