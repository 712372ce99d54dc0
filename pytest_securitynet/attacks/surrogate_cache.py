"""One trained surrogate per (data, recipe) in a process, shared by every benchmark that needs it.

The evasion transfer source (a ResNet-18 trained on the auxiliary set's true labels) and the
stealing surrogates are trained with the same trainer; when two benchmarks ask for a surrogate
trained on the same data with the same recipe on the same device, the second one gets the first
one's model instead of training again.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from torch import nn

from .stealing import train_surrogate
from .training import Schedule, TrainStats


@dataclass(frozen=True)
class SurrogateRecipe:
    """Everything that decides how a surrogate is trained, apart from the data (SecurityNet §3.1
    defaults: ResNet-18, SGD lr 0.01, momentum 0.9, 30 epochs, cosine schedule)."""

    architecture: str = "resnet18"
    epochs: int = 30
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Schedule = "cosine"
    batch_size: int | None = None
    scale_lr: bool = True
    label_only: bool = False
    augment: bool | None = None
    hflip: bool = True
    seed: int = 0


class SurrogateCache:
    """Trained surrogates of this process keyed by (data key, recipe, device).

    ``data_key`` names the training data and its targets, e.g. ``("cifar10-jpeg", "train",
    index_digest, "true-labels")`` or ``(..., target_id, "posteriors")``: the caller decides what
    makes two training sets the same.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple[nn.Module, TrainStats]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def get_or_train(
        self,
        data_key: Hashable,
        recipe: SurrogateRecipe,
        images_uint8: torch.Tensor,
        targets: torch.Tensor,
        *,
        num_classes: int,
        device: torch.device | str,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[nn.Module, TrainStats, bool]:
        """The surrogate for this data and recipe, trained now unless already there; returns
        ``(model, stats of its training, cached)``."""
        key = (data_key, recipe, str(torch.device(device)), num_classes)
        cached = key in self._entries
        if not cached:
            self._entries[key] = train_surrogate(
                images_uint8, targets, num_classes=num_classes, surrogate=recipe.architecture,
                epochs=recipe.epochs, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                schedule=recipe.schedule, batch_size=recipe.batch_size, scale_lr=recipe.scale_lr,
                label_only=recipe.label_only, augment=recipe.augment, hflip=recipe.hflip, device=device,
                seed=recipe.seed, progress=progress,
            )
        model, stats = self._entries[key]
        return model, stats, cached
