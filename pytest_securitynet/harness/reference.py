"""Reference models for membership inference (RMIA, LiRA): one set per dataset, recipe, seed and pool.

The attacks score the evaluation halves of the attacker's members and non-members
(`attacks.membership.attacker_split`); every other sample of the dataset, from both splits, is
the reference pool. K models train on halves of that pool (`attacks.reference_models`), and a
seeded part of it serves as RMIA's population samples z. The trained models do not depend on the
target, so they are kept in memory for every target of the dataset in this process and on disk
(`<cache>/reference/<dataset>/<key>.pt`, state dicts only) for later runs; the key names the
dataset, the recipe, K, the seed and the pool's samples.

The recipe (`trainer_for`, recorded per row as `reference_match`): for a `demo` catalog entry, the
target's own (its builder and `train` settings, which the harness knows: `target`); for a catalog
architecture of a family the harness can build, that family with the target's preprocessing
(`family`: CIFAR ResNets of depth 6n+2 at 32 px get a CIFAR ResNet-20, so one set serves the whole
zoo of a dataset); otherwise `attacks.reference_models.default_recipe` (`fallback`: a small CNN
under 32 px, a CIFAR ResNet-18 from 32 px), or an architecture the run names (`chosen`).

Online sets (`online_reference_set`) train on random halves of the attacker's members and
non-members instead, for targets whose training members the catalog names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pytest_securitynet.attacks.membership import attacker_split
from pytest_securitynet.attacks.reference_models import (
    CIFAR_RECIPE,
    ReferenceRecipe,
    build_reference_network,
    default_recipe,
    pool_indices,
    population_rows,
    recipe_for,
    recipe_key,
    reference_log_probs,
    train_classifier,
    train_reference_models,
)
from pytest_securitynet.catalog.entries import ModelEntry
from pytest_securitynet.harness.budget_rules import surrogate_choices
from pytest_securitynet.harness.data import LabeledSet, take
from pytest_securitynet.zoo.architectures import Normalized, build, cifar_resnet
from pytest_securitynet.zoo.datasets import ImageData
from pytest_securitynet.zoo.demo import train_demo
from pytest_securitynet.zoo.store import FileStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trainer:
    """How reference models are built and trained, with a JSON description for the cache key and the rows."""

    description: dict[str, Any]
    skeleton: Callable[[int], nn.Module]
    """An untrained model for `n` training images, whose state dict a trained one loads into."""
    train: Callable[..., nn.Module]
    """`train(images_uint8, labels, *, num_classes, seed, device) -> model` in eval mode."""


MATCHED_CIFAR_RESNET = dataclasses.replace(CIFAR_RECIPE, architecture="cifar-resnet20", epochs=60, batch_size=128)
"""For CIFAR ResNets (akamaster's and pytorchcv's zoos): ResNet-20, SGD lr 0.1 cosine, crop and flip,
60 epochs (GPU-sized)."""

_CIFAR_RESNET = re.compile(r"^(?:cifar-)?resnet(\d+)$")
_RESNET_TYPES = ("resnet", "preresnet", "wrn", "resnext")


def reference_architecture_choices() -> tuple[str, ...]:
    """What `membership.reference_architecture` accepts: `auto`, a registered surrogate, or a CIFAR ResNet depth."""
    return (*surrogate_choices(), *(f"cifar-resnet{depth}" for depth in (20, 32, 44, 56, 110)))


def cifar_resnet_depth(architecture: str, side: int) -> int | None:
    """The depth of a CIFAR ResNet name (`resnet20`, `cifar-resnet56`) at 32 px, else None (not buildable here)."""
    match = _CIFAR_RESNET.match(architecture)
    if match is None or side != 32 or (int(match[1]) - 2) % 6:
        return None
    return int(match[1])


def recipe_trainer(recipe: ReferenceRecipe, num_classes: int, input_shape: tuple[int, int, int],
                   match: str = "fallback") -> Trainer:
    """Reference models from a `ReferenceRecipe` (small CNN or a surrogate architecture) and the plain training loop."""
    channels, side = input_shape[0], input_shape[1]
    return Trainer(
        {"match": match, "recipe": dataclasses.asdict(recipe)},
        lambda _n: build_reference_network(recipe, num_classes, side, channels),
        partial(train_classifier, recipe=recipe),
    )


def cifar_resnet_trainer(entry: ModelEntry, depth: int, num_classes: int, epochs: int, match: str) -> Trainer:
    """CIFAR ResNets of `depth` taking [0, 1] images through the target's own mean / std (its preprocessing)."""
    recipe = dataclasses.replace(MATCHED_CIFAR_RESNET, architecture=f"cifar-resnet{depth}",
                                 epochs=epochs or MATCHED_CIFAR_RESNET.epochs)
    mean = list(entry.preprocess.get("mean", [0.5, 0.5, 0.5]))
    std = list(entry.preprocess.get("std", [0.5, 0.5, 0.5]))

    def network() -> nn.Module:
        return Normalized(cifar_resnet(depth, num_classes), mean, std)

    description = {"match": match, "family": "cifar-resnet", "recipe": dataclasses.asdict(recipe),
                   "preprocess": {"mean": mean, "std": std}}
    return Trainer(description, lambda _n: network(), partial(train_classifier, recipe=recipe, network=network))


def demo_trainer(entry: ModelEntry) -> Trainer:
    """Reference models trained like a demo entry's own network (an RBF network gets one centre per image)."""

    def network(n: int) -> nn.Module:
        args = dict(entry.raw.get("builder_args", {}))
        if "num_centers" in args:
            args["num_centers"] = n
        return build(entry.raw["builder"], **args)

    def train(images: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int,
              device: torch.device | str) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = network(len(images))
            train_demo(net, entry, images, labels)
        return Normalized(net, entry.preprocess["mean"], entry.preprocess["std"]).to(device).eval()

    described = {k: entry.raw.get(k) for k in ("builder", "builder_args", "train", "preprocess")}
    return Trainer(
        {"match": "target", "like": entry.id, **described},
        lambda n: Normalized(network(n), entry.preprocess["mean"], entry.preprocess["std"]),
        train,
    )


def trainer_for(entry: ModelEntry, input_shape: tuple[int, int, int], *, architecture: str = "auto",
                epochs: int = 0) -> Trainer:
    """The documented default (`auto`): models that resemble the target, as close as the harness can build.

    Demo entries: the target's own recipe (`target`). A CIFAR ResNet (`resnet20` ... at 32 px): a
    CIFAR ResNet-20 with the target's mean / std (`family`); any other ResNet or wide ResNet: the CIFAR
    ResNet-18 recipe (`family`); anything else: `default_recipe` by input size (`fallback`).
    `architecture` names `small-cnn`, a surrogate (`resnet18`, `wrn50_2`) or `cifar-resnetN` instead
    (`chosen`); `epochs` > 0 replaces the recipe's number of epochs.
    """
    num_classes = entry.annotations["num_classes"]
    side = input_shape[1]
    if architecture == "auto":
        if entry.source_kind == "demo":
            return demo_trainer(entry)
        if cifar_resnet_depth(entry.architecture, side) is not None:
            return cifar_resnet_trainer(entry, 20, num_classes, epochs, "family")
        in_family = entry.model_type in _RESNET_TYPES and side >= 32
        recipe = CIFAR_RECIPE if in_family else default_recipe(side)
        match = "family" if in_family else "fallback"
    else:
        if architecture.startswith("cifar-"):
            depth = cifar_resnet_depth(architecture, side)
            if depth is None or input_shape[0] != 3:
                raise ValueError(f"membership.reference_architecture={architecture} builds CIFAR ResNets for "
                                 f"32 px RGB images; {entry.id} takes {list(input_shape)}: choose auto, small-cnn "
                                 "or resnet18")
            return cifar_resnet_trainer(entry, depth, num_classes, epochs, "chosen")
        recipe, match = recipe_for(architecture, side), "chosen"
    if epochs > 0:
        recipe = dataclasses.replace(recipe, epochs=epochs)
    return recipe_trainer(recipe, num_classes, input_shape, match)


def scored_indices(members: LabeledSet, nonmembers: LabeledSet, seed: int) -> dict[str, torch.Tensor]:
    """Per split, the dataset indices the attacks score: the evaluation halves of `attacker_split(seed)`."""
    split = attacker_split(len(members), len(nonmembers), seed)
    scored: dict[str, list[torch.Tensor]] = {}
    for data, rows in ((members, split.member_eval), (nonmembers, split.nonmember_eval)):
        scored.setdefault(data.split, []).append(data.indices[rows])
    return {name: torch.cat(parts) for name, parts in scored.items()}


@dataclass
class ReferenceSet:
    """K trained reference models, the pool they trained on, and RMIA's population samples."""

    key: str
    models: list[nn.Module]
    in_pool: torch.Tensor
    population: list[LabeledSet]
    description: dict[str, Any]
    pool_size: int
    source: str
    """`trained`, `disk` (loaded from the cache directory) or `memory` (trained earlier in this process)."""
    time_s: float
    """Seconds this call took to train or load the models (0 from memory)."""
    _outputs: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict, repr=False)
    pool: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    """Per split, the dataset indices of the pool, in `in_pool`'s column order (train first); offline sets only."""

    @property
    def train_sizes(self) -> list[int]:
        return self.in_pool.sum(dim=1).tolist()

    def log_probs(self, data: LabeledSet, device: torch.device, batch_size: int) -> torch.Tensor:
        """Every reference model's log-probabilities [K, N, C] on `data`, computed once per set of samples."""
        key = (data.split, hashlib.sha256(data.indices.numpy().tobytes()).hexdigest())
        if key not in self._outputs:
            self._outputs[key] = reference_log_probs(self.models, data.images, device=device, batch_size=batch_size)
        return self._outputs[key]


_IN_MEMORY: dict[str, ReferenceSet] = {}
_KEEP_IN_MEMORY = 2


def reference_set(store: FileStore, data: ImageData, trainer: Trainer, members: LabeledSet, nonmembers: LabeledSet, *,
                  num_classes: int, k: int, seed: int, device: torch.device, n_population: int,
                  max_pool: int = 0) -> ReferenceSet:
    """The reference models for scoring `members` and `nonmembers` with `seed`: from memory, the disk cache, or trained.

    `max_pool` > 0 keeps a seeded `max_pool` of the pool (for CPU-sized runs); 0 keeps all of it.
    """
    sizes = {"train": len(data.train_labels), "test": len(data.test_labels)}
    pool = pool_indices(sizes, scored_indices(members, nonmembers, seed))
    if 0 < max_pool < sum(len(idx) for idx in pool.values()):
        keep = population_rows(sum(len(idx) for idx in pool.values()), max_pool, seed + 1)
        n_train = len(pool["train"])
        pool = {"train": pool["train"][keep[keep < n_train]], "test": pool["test"][keep[keep >= n_train] - n_train]}
    key = recipe_key(data.dataset_id, trainer.description, k, seed, pool)
    if key in _IN_MEMORY:
        return _from_memory(key)
    n_pool = sum(len(idx) for idx in pool.values())
    start = time.perf_counter()

    def pool_data() -> tuple[torch.Tensor, torch.Tensor]:
        parts = [take(data, split, pool[split], f"pool-{split}") for split in ("train", "test")]
        return torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts])

    models, in_pool, source = _trained_or_loaded(store, data.dataset_id, key, trainer, pool_data,
                                                 num_classes=num_classes, k=k, seed=seed, device=device)
    z = population_rows(n_pool, n_population, seed)
    n_train_pool = len(pool["train"])
    population = [take(data, "train", pool["train"][z[z < n_train_pool]], "population-train"),
                  take(data, "test", pool["test"][z[z >= n_train_pool] - n_train_pool], "population-test")]
    return _remember(ReferenceSet(key, models, in_pool, [p for p in population if len(p)], trainer.description,
                                  n_pool, source, time.perf_counter() - start, pool=pool))


def online_reference_set(store: FileStore, data: ImageData, trainer: Trainer, members: LabeledSet,
                         nonmembers: LabeledSet, *, num_classes: int, k: int, seed: int,
                         device: torch.device) -> ReferenceSet:
    """Reference models trained on random halves of `members` + `nonmembers` (online): from memory, disk, or trained.

    The pool is every held sample, members first, so `in_pool[:, :len(members)]` says which
    models trained on each member. RMIA's population samples z are the non-members of the
    attacker's training half (`attacker_split`): never scored, IN for half of the models, and
    non-members of the target.
    """
    pool = {f"members-{members.split}": members.indices, f"nonmembers-{nonmembers.split}": nonmembers.indices}
    key = recipe_key(data.dataset_id, {**trainer.description, "mode": "online"}, k, seed, pool)
    if key in _IN_MEMORY:
        return _from_memory(key)
    start = time.perf_counter()
    models, in_pool, source = _trained_or_loaded(
        store, data.dataset_id, key, trainer,
        lambda: (torch.cat([members.images, nonmembers.images]), torch.cat([members.labels, nonmembers.labels])),
        num_classes=num_classes, k=k, seed=seed, device=device)
    population = nonmembers.subset(attacker_split(len(members), len(nonmembers), seed).nonmember_train,
                                   "population-nonmembers")
    return _remember(ReferenceSet(key, models, in_pool, [population], {**trainer.description, "mode": "online"},
                                  len(members) + len(nonmembers), source, time.perf_counter() - start))


def _from_memory(key: str) -> ReferenceSet:
    cached = _IN_MEMORY[key]
    return dataclasses.replace(cached, source="memory", time_s=0.0, _outputs=cached._outputs)


def _remember(result: ReferenceSet) -> ReferenceSet:
    while len(_IN_MEMORY) >= _KEEP_IN_MEMORY:
        _IN_MEMORY.pop(next(iter(_IN_MEMORY)))
    _IN_MEMORY[result.key] = result
    return result


def _trained_or_loaded(store: FileStore, dataset_id: str, key: str, trainer: Trainer,
                       pool_data: Callable[[], tuple[torch.Tensor, torch.Tensor]], *, num_classes: int, k: int,
                       seed: int, device: torch.device) -> tuple[list[nn.Module], torch.Tensor, str]:
    """The models of `key` from the cache directory, or trained on `pool_data()` and saved there."""
    path = store.path("reference", dataset_id, f"{key}.pt")
    with store.lock("reference", dataset_id, key):
        if path.exists():
            models, in_pool = _load(path, trainer, device)
            return models, in_pool, "disk"
        log.info("training %d reference models for %s (once; cached at %s)", k, dataset_id, path)
        images, labels = pool_data()
        trained = train_reference_models(images, labels, num_classes=num_classes, k=k, seed=seed, device=device,
                                         train_fn=trainer.train)
        saved = {"in_pool": trained.in_pool, "state_dicts": [m.state_dict() for m in trained.models]}
        store.write(path, lambda tmp: torch.save(saved, tmp))  # a full disk: one line naming the folder
        return trained.models, trained.in_pool, "trained"


def _load(path: Path, trainer: Trainer, device: torch.device) -> tuple[list[nn.Module], torch.Tensor]:
    """Reference models and their inclusion matrix from a cache file (state dicts only: loading runs no code)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    models = []
    for state, rows in zip(saved["state_dicts"], saved["in_pool"]):
        model = trainer.skeleton(int(rows.sum()))
        model.load_state_dict(state)
        models.append(model.to(device).eval())
    return models, saved["in_pool"]
