"""Reference models for RMIA and LiRA: K classifiers trained on the attacker's population data.

Reference models depend on the dataset, not on the target, so a harness trains them once per
(dataset, recipe, seed, pool) and reuses them for every target of that dataset. The pool must be
disjoint from every sample the attacks score; each pool sample is IN for half of the K models
(Carlini et al., S&P 2022: each shadow model trains on a random half of the population), so the
population samples z that RMIA compares with can come from the pool too.

Architecture (a recipe field, overridable): a CIFAR ResNet-18 (`surrogates.build_surrogate`,
11M parameters) for inputs of 32 px and more, trained with SGD and crop/flip augmentation; a
two-layer CNN for smaller inputs such as the 8x8 digits demo, trained with Adam. Every model
takes float images in [0, 1] and normalises inside, like the targets.

Training goes through one function with a plain signature (`TrainFn`); the ResNet recipes use
model stealing's fast training path (`training.train_classifier_fast`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .training import random_crop_flip, train_classifier_fast
from .surrogates import Normalize, build_surrogate

__all__ = [
    "CIFAR_RECIPE",
    "DEFAULT_K",
    "DEFAULT_POPULATION",
    "SMALL_INPUT_RECIPE",
    "ReferenceModels",
    "ReferenceRecipe",
    "TrainFn",
    "build_reference_network",
    "default_recipe",
    "recipe_for",
    "inclusion_matrix",
    "pool_indices",
    "population_rows",
    "recipe_key",
    "reference_log_probs",
    "train_classifier",
    "train_reference_models",
]

logger = logging.getLogger(__name__)

DEFAULT_K = 4
"""Reference models per dataset: K = 4 (RMIA reaches most of its power with few models offline)."""

DEFAULT_POPULATION = 5000
"""Population samples z RMIA compares each x with (fewer where the pool is smaller): its score's resolution is 1 / z."""


@dataclass(frozen=True)
class ReferenceRecipe:
    """How one reference model is built and trained; every field enters the cache key."""

    architecture: str
    """`small-cnn`, or a `surrogates.build_surrogate` name (`resnet18`, `wrn50_2`)."""
    epochs: int
    optimizer: str
    """`sgd` (momentum 0.9, cosine schedule) or `adam` (constant rate)."""
    lr: float
    weight_decay: float
    batch_size: int
    augment: bool
    """Random crop (pad = side / 8) and horizontal flip, on the device."""


SMALL_INPUT_RECIPE = ReferenceRecipe(
    architecture="small-cnn", epochs=40, optimizer="adam", lr=3e-3, weight_decay=5e-4, batch_size=64, augment=False
)
"""For inputs under 32 px (the digits demo): a small CNN, Adam, no augmentation."""

CIFAR_RECIPE = ReferenceRecipe(
    architecture="resnet18", epochs=40, optimizer="sgd", lr=0.1, weight_decay=5e-4, batch_size=256, augment=True
)
"""For 32 px inputs and more: CIFAR ResNet-18, SGD lr 0.1 with cosine decay, crop and flip."""


def recipe_for(architecture: str, input_size: int) -> ReferenceRecipe:
    """The recipe that goes with an architecture: Adam for `small-cnn` (crop and flip from 32 px), SGD for the ResNets."""
    if architecture == "small-cnn":
        return dataclasses.replace(SMALL_INPUT_RECIPE, augment=input_size >= 32)
    return dataclasses.replace(CIFAR_RECIPE, architecture=architecture)


def default_recipe(input_size: int) -> ReferenceRecipe:
    """The documented default for images of side `input_size`: a small CNN under 32 px, a CIFAR ResNet-18 from 32 px."""
    return SMALL_INPUT_RECIPE if input_size < 32 else CIFAR_RECIPE


def recipe_key(
    dataset_id: str, recipe: ReferenceRecipe | Mapping[str, Any], k: int, seed: int, pool_indices: dict[str, torch.Tensor]
) -> str:
    """A short digest naming one set of reference models: dataset, recipe (or any JSON description), K, seed, pool."""
    pool = {split: hashlib.sha256(idx.to(torch.int64).cpu().numpy().tobytes()).hexdigest() for split, idx in pool_indices.items()}
    described = dataclasses.asdict(recipe) if isinstance(recipe, ReferenceRecipe) else dict(recipe)
    payload = {"dataset": dataset_id, "recipe": described, "k": k, "seed": seed, "pool": pool}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class SmallCNN(nn.Module):
    """Two 3x3 convolutions (32, 64 channels), 2x2 max-pool, dropout, linear head: for inputs under 32 px."""

    def __init__(self, num_classes: int, input_size: int, in_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * (input_size // 2) ** 2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_reference_network(recipe: ReferenceRecipe, num_classes: int, input_size: int, in_channels: int) -> nn.Module:
    """An untrained reference model taking [0, 1] images (fixed (x - 0.5) / 0.5 normalisation inside)."""
    if recipe.architecture == "small-cnn":
        return nn.Sequential(Normalize(0.5, 0.5), SmallCNN(num_classes, input_size, in_channels))
    return build_surrogate(recipe.architecture, num_classes, input_size, in_channels)


TrainFn = Callable[..., nn.Module]
"""`train_fn(images_uint8, labels, *, num_classes, seed, device) -> model` (eval mode, [0, 1] inputs)."""


def train_classifier(
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    seed: int,
    device: torch.device | str = "cpu",
    recipe: ReferenceRecipe | None = None,
    network: Callable[[], nn.Module] | None = None,
) -> nn.Module:
    """Train one classifier from scratch with `recipe` (default: by input size); deterministic for a seed on CPU.

    `network` builds the untrained model (taking [0, 1] images) instead of the recipe's
    architecture, e.g. a copy of the target's; it is called under the seed.

    SGD recipes go through model stealing's fast path (`training.train_classifier_fast`: on CUDA,
    bf16 autocast, channels_last and a fused step; momentum 0.9, per-step cosine decay); the Adam
    recipe of the small CNN is a plain loop with a constant rate.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
        raise ValueError("images must be uint8 [N, C, H, W]")
    n, in_channels, height, _ = images_uint8.shape
    if n == 0:
        raise ValueError("cannot train a reference model on no images")
    recipe = recipe or default_recipe(height)
    if recipe.optimizer not in ("sgd", "adam"):
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}; use 'sgd' or 'adam'")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = network() if network is not None else build_reference_network(recipe, num_classes, height, in_channels)
        model = model.to(device)
    # Dropout draws from the global generator: fork it so training is seeded and leaves the caller's state.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode(False), \
            torch.enable_grad():
        torch.manual_seed(seed)
        if recipe.optimizer == "sgd":
            model, _ = train_classifier_fast(
                model, images_uint8, labels.to(torch.int64), epochs=recipe.epochs, lr=recipe.lr,
                batch_size=recipe.batch_size, scale_lr=False, device=device, seed=seed,
                weight_decay=recipe.weight_decay, augment=recipe.augment,
            )
            return model.eval()
        _train_adam(model, images_uint8.to(device), labels.to(device, torch.int64), recipe, seed)
    return model.eval()


def _train_adam(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, recipe: ReferenceRecipe, seed: int) -> None:
    """Adam at a constant rate on shuffled mini-batches, with crop and flip where the recipe says."""
    n, height = x_all.shape[0], x_all.shape[2]
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    generator = torch.Generator(device=x_all.device).manual_seed(seed)
    n_batches = math.ceil(n / recipe.batch_size)
    model.train()
    for _ in range(recipe.epochs):
        for idx in torch.randperm(n, device=x_all.device, generator=generator).tensor_split(n_batches):
            xb = x_all[idx]
            if recipe.augment:
                xb = random_crop_flip(xb, max(1, height // 8), True, generator)
            loss = F.cross_entropy(model(xb.float().div(255)), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def inclusion_matrix(n: int, k: int, seed: int) -> torch.Tensor:
    """[k, n] bool: which pool samples each model trains on; each sample is IN for k // 2 models (k odd: k // 2 or k // 2 + 1)."""
    if k < 1:
        raise ValueError("need at least one reference model")
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.argsort(torch.rand(n, k, generator=gen), dim=1).argsort(dim=1)
    n_in = torch.full((n, 1), k // 2)
    if k % 2:
        n_in += torch.randint(0, 2, (n, 1), generator=gen)
    return (ranks < n_in).T.contiguous()


def pool_indices(split_sizes: dict[str, int], scored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per split, the sorted indices of every sample the attacks do not score: the reference models' pool."""
    pool = {}
    for split, size in split_sizes.items():
        keep = torch.ones(size, dtype=torch.bool)
        if split in scored:
            keep[scored[split].cpu()] = False
        pool[split] = keep.nonzero().squeeze(1)
    return pool


def population_rows(n_pool: int, n_population: int = DEFAULT_POPULATION, seed: int = 0) -> torch.Tensor:
    """Sorted rows of the pool used as RMIA's population samples z: all of it, or a seeded `n_population`."""
    if n_pool <= n_population:
        return torch.arange(n_pool)
    return torch.randperm(n_pool, generator=torch.Generator().manual_seed(seed))[:n_population].sort().values


@dataclass
class ReferenceModels:
    """K trained reference models and, per model, the pool samples it trained on."""

    models: list[nn.Module]
    in_pool: torch.Tensor
    """[K, N_pool] bool."""
    recipe: ReferenceRecipe | None
    seed: int


def train_reference_models(
    pool_images: torch.Tensor,
    pool_labels: torch.Tensor,
    *,
    num_classes: int,
    k: int = DEFAULT_K,
    recipe: ReferenceRecipe | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    train_fn: TrainFn | None = None,
) -> ReferenceModels:
    """Train K reference models, each on its half of the pool (`inclusion_matrix`), seeded per model.

    The pool (uint8 [N, C, H, W] and labels) must hold no sample the attacks will score. With
    `train_fn` the models are trained by it (`recipe` is then only recorded); without, by
    `train_classifier` with `recipe` (default: `default_recipe` of the input size).
    """
    if pool_images.shape[0] != pool_labels.shape[0]:
        raise ValueError("pool images and labels differ in length")
    if recipe is None and train_fn is None:
        recipe = default_recipe(pool_images.shape[2])
    in_pool = inclusion_matrix(pool_images.shape[0], k, seed)
    models = []
    for i in range(k):
        rows = in_pool[i].nonzero().squeeze(1)
        model_seed = seed * 1_000_003 + i
        if train_fn is not None:
            model = train_fn(pool_images[rows], pool_labels[rows], num_classes=num_classes, seed=model_seed, device=device)
        else:
            model = train_classifier(pool_images[rows], pool_labels[rows], num_classes=num_classes, seed=model_seed,
                                     device=device, recipe=recipe)
        logger.info("reference model %d/%d trained on %d pool samples", i + 1, k, rows.numel())
        models.append(model.eval())
    return ReferenceModels(models, in_pool, recipe, seed)


def reference_log_probs(
    models: list[nn.Module], images_uint8: torch.Tensor, *, device: torch.device | str = "cpu", batch_size: int = 512
) -> torch.Tensor:
    """Log-softmax outputs [K, N, C] (float32, on `device`) of every model on uint8 images."""
    outputs = []
    with torch.inference_mode():
        for model in models:
            model.to(device).eval()
            rows = [
                model(images_uint8[start : start + batch_size].to(device).float().div(255)).float().log_softmax(dim=1)
                for start in range(0, images_uint8.shape[0], batch_size)
            ]
            outputs.append(torch.cat(rows))
    return torch.stack(outputs)
