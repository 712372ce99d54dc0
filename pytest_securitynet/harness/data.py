"""The attacker's and evaluator's data: seeded, stable subsets of a dataset's splits.

Paper defaults (SecurityNet §3): members are a seeded subset of the training split, non-members
come from the test split, the auxiliary set is a seeded 50% of the training split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from pytest_securitynet.zoo.datasets import ImageData
from pytest_securitynet.attacks.common import to_float

# Each purpose draws from its own seeded stream, so changing one set's size never moves another.
_STREAMS = {"members": 1, "nonmembers": 2, "auxiliary": 3, "train": 4, "test": 5}


@dataclass(frozen=True)
class LabeledSet:
    """Images (uint8, [N, C, H, W], CPU) and labels of one subset, with where they came from."""

    name: str
    dataset_id: str
    split: str
    indices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, batch_size: int, device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Float images in [0,1] and labels on `device`, `batch_size` at a time."""
        for start in range(0, len(self), batch_size):
            yield (to_float(self.images[start:start + batch_size], device),
                   self.labels[start:start + batch_size].to(device, non_blocking=True))

    def subset(self, positions: torch.Tensor, name: str | None = None) -> LabeledSet:
        """The samples at `positions` (0..len-1) of this set."""
        return LabeledSet(name or self.name, self.dataset_id, self.split, self.indices[positions],
                          self.images[positions], self.labels[positions])


def seeded_choice(n_total: int, n: int, seed: int, purpose: str) -> torch.Tensor:
    """`n` distinct sorted indices out of `n_total`, fixed by (seed, purpose)."""
    n = min(n, n_total)
    rng = np.random.default_rng([seed, _STREAMS[purpose]])
    return torch.from_numpy(np.sort(rng.choice(n_total, size=n, replace=False))).long()


def take(data: ImageData, split: str, indices: torch.Tensor, name: str) -> LabeledSet:
    images, labels = data.split(split)
    return LabeledSet(name, data.dataset_id, split, indices, images[indices], labels[indices])


@dataclass(frozen=True)
class SetSizes:
    """How many samples each set holds; `limit` caps every set (for CPU-sized runs)."""

    members: int = 5000
    auxiliary_fraction: float = 0.5
    limit: int | None = None

    def cap(self, n: int) -> int:
        return n if self.limit is None else min(n, self.limit)


def make_sets(data: ImageData, sizes: SetSizes, seed: int,
              training_members: torch.Tensor | None = None) -> dict[str, LabeledSet]:
    """Members, non-members (same count), auxiliary, and the train/test evaluation sets.

    With `training_members` (sorted indices into the training split: what the model was trained
    on), `members` and the `train` evaluation set are drawn from those samples only.
    """
    n_train, n_test = len(data.train_labels), len(data.test_labels)
    pool = torch.arange(n_train) if training_members is None else training_members
    n_members = sizes.cap(min(sizes.members, len(pool), n_test))
    n_aux = sizes.cap(int(n_train * sizes.auxiliary_fraction))
    return {
        "members": take(data, "train", pool[seeded_choice(len(pool), n_members, seed, "members")], "members"),
        "nonmembers": take(data, "test", seeded_choice(n_test, n_members, seed, "nonmembers"), "nonmembers"),
        "auxiliary": take(data, "train", seeded_choice(n_train, n_aux, seed, "auxiliary"), "auxiliary"),
        "train": take(data, "train", pool[seeded_choice(len(pool), sizes.cap(len(pool)), seed, "train")], "train"),
        "test": take(data, "test", seeded_choice(n_test, sizes.cap(n_test), seed, "test"), "test"),
    }
