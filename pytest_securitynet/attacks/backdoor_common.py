"""Helpers shared by the backdoor attack and detection modules (device, batching, seeding)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

DeviceLike = torch.device | str


def to_float(images_uint8: torch.Tensor, device: DeviceLike) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> float in [0, 1] on ``device``."""
    return images_uint8.to(device, non_blocking=True).float().div_(255)


def cpu_generator(seed: int) -> torch.Generator:
    """A seeded CPU generator: random draws are made on CPU so results do not depend on the device."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


def sample_index(n_total: int, n_wanted: int | None, generator: torch.Generator) -> torch.Tensor:
    """A seeded random subset (without replacement) of ``range(n_total)``, at most ``n_wanted`` long."""
    permutation = torch.randperm(n_total, generator=generator)
    return permutation if n_wanted is None else permutation[: min(n_wanted, n_total)]


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (base 2, as in the STRIP code) of softmax(logits) along the last axis."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1) / torch.log(torch.tensor(2.0, device=logits.device))


@torch.no_grad()
def predict_labels(
    model: nn.Module, images_uint8: torch.Tensor, *, device: DeviceLike, batch_size: int = 1024
) -> torch.Tensor:
    """Predicted labels (CPU, int64) for uint8 images, converted batch by batch on ``device``."""
    model.eval()
    predictions = [
        model(to_float(chunk, device)).argmax(1).cpu() for chunk in images_uint8.split(batch_size)
    ]
    return torch.cat(predictions)


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Disable gradients of the model's parameters (restored on exit): only inputs are optimised."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
