"""BadNets data poisoning (Gu et al., 2017) and a small deterministic trainer for known-answer tests.

A square patch of constant colour is stamped into a corner of a fraction of the training images
whose label is then set to the attacker's target; a model trained on the result classifies any
patched input as the target while keeping its clean accuracy.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .common import DeviceLike, seeded_generator, to_float

logger = logging.getLogger(__name__)

_POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left")


def _patch_slices(height: int, width: int, patch_size: int, position: str) -> tuple[slice, slice]:
    """Row and column slices of a ``patch_size`` square in the named corner."""
    if position not in _POSITIONS:
        raise ValueError(f"position must be one of {_POSITIONS}, got {position!r}")
    if not 1 <= patch_size <= min(height, width):
        raise ValueError(f"patch_size {patch_size} does not fit a {height}x{width} image")
    rows = slice(height - patch_size, height) if position.startswith("bottom") else slice(0, patch_size)
    cols = slice(width - patch_size, width) if position.endswith("right") else slice(0, patch_size)
    return rows, cols


def add_patch_trigger(
    images_float: torch.Tensor,
    patch_size: int,
    value: float = 1.0,
    position: str = "bottom-right",
) -> torch.Tensor:
    """Return a copy of float images [N, C, H, W] with a ``value``-filled square patch (BadNets trigger)."""
    rows, cols = _patch_slices(images_float.shape[-2], images_float.shape[-1], patch_size, position)
    patched = images_float.clone()
    patched[..., rows, cols] = value
    return patched


def trigger_images_uint8(
    images_uint8: torch.Tensor, patch_size: int, position: str = "bottom-right"
) -> torch.Tensor:
    """Return a copy of uint8 images with a white (255) patch: triggered test inputs."""
    rows, cols = _patch_slices(images_uint8.shape[-2], images_uint8.shape[-1], patch_size, position)
    patched = images_uint8.clone()
    patched[..., rows, cols] = 255
    return patched


def poison_dataset(
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    *,
    target_label: int,
    poison_fraction: float,
    patch_size: int,
    seed: int,
    position: str = "bottom-right",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BadNets poisoning: patch ``poison_fraction`` of the data and relabel it to ``target_label``.

    Poisoned samples are drawn (seeded) among images whose label differs from the target, so every
    poisoned sample teaches the trigger -> target shortcut. Returns new (images, labels,
    poisoned_index); the inputs are left untouched.
    """
    if not 0.0 < poison_fraction <= 1.0:
        raise ValueError(f"poison_fraction must be in (0, 1], got {poison_fraction}")
    candidates = torch.nonzero(labels != target_label).flatten()
    n_poison = min(round(poison_fraction * len(labels)), len(candidates))
    order = torch.randperm(len(candidates), generator=seeded_generator(seed))
    poisoned_index = candidates[order[:n_poison]].sort().values
    images = images_uint8.clone()
    new_labels = labels.clone()
    images[poisoned_index] = trigger_images_uint8(images_uint8[poisoned_index], patch_size, position)
    new_labels[poisoned_index] = target_label
    logger.info("poisoned %d of %d samples -> label %d", n_poison, len(labels), target_label)
    return images, new_labels, poisoned_index


def train_classifier(
    model: nn.Module,
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    device: DeviceLike,
    seed: int,
) -> nn.Module:
    """Train ``model`` with Adam and cross-entropy on seeded shuffles; returns it in eval mode on ``device``.

    Deterministic on CPU for a given seed and initial weights (seed the model's construction too).
    """
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = seeded_generator(seed)
    images = images_uint8.to(device)
    targets = labels.to(device)
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator).to(device)
        total = torch.zeros((), device=device)
        for batch in order.split(batch_size):
            loss = nn.functional.cross_entropy(model(to_float(images[batch], device)), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("epoch %d: train loss %.4f", epoch, total.item() / len(images))
    return model.eval()
