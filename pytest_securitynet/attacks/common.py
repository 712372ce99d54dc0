"""What every attack module shares: devices, seeded generators, uint8 -> float conversion, batched
prediction, entropy, and the attack context (eval mode, frozen weights, restored afterwards).

Images are uint8 tensors [N, C, H, W]; models take float images in [0, 1] and return logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

DeviceLike = torch.device | str


def resolve_device(device: DeviceLike | None, model: nn.Module | None = None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter, else the CPU."""
    if device is not None:
        return torch.device(device)
    param = next(model.parameters(), None) if model is not None else None
    return param.device if param is not None else torch.device("cpu")


def seeded_generator(seed: int, device: DeviceLike = "cpu") -> torch.Generator:
    """A generator seeded with ``seed`` on ``device`` (the one way attacks seed their random draws).

    Draws from a CPU generator do not depend on the device the model runs on; a device generator
    keeps draws that feed device-side loops (random starts, shuffles) on the device.
    """
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(int(seed))
    return generator


def check_uint8(images: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``images`` is a uint8 tensor [N, C, H, W]."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"{name} must be a uint8 tensor [N, C, H, W]; got {images.dtype} "
                         f"{tuple(images.shape)}")


def to_float(images_uint8: torch.Tensor, device: DeviceLike) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> float in [0, 1] on ``device``."""
    return images_uint8.to(device, non_blocking=True).float().div_(255)


def sample_index(n_total: int, n_wanted: int | None, generator: torch.Generator) -> torch.Tensor:
    """A seeded random subset (without replacement) of ``range(n_total)``, at most ``n_wanted`` long."""
    permutation = torch.randperm(n_total, generator=generator)
    return permutation if n_wanted is None else permutation[: min(n_wanted, n_total)]


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (base 2, as in the STRIP code) of softmax(logits) along the last axis."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1) / torch.log(torch.tensor(2.0, device=logits.device))


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off ``requires_grad`` on the model's parameters for the block, then restore it.

    Attacks need gradients with respect to the input only; frozen weights keep ``.grad`` untouched
    and let autograd skip weight-gradient kernels and the activations they would save.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The state every attack runs its model in: eval mode and frozen weights, restored on exit."""
    was_training = model.training
    model.eval()
    try:
        with frozen_parameters(model):
            yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_labels(
    model: nn.Module, images_uint8: torch.Tensor, *, device: DeviceLike, batch_size: int = 1024
) -> torch.Tensor:
    """Predicted labels (CPU, int64) for uint8 images, converted batch by batch on ``device``."""
    with attack_mode(model):
        predictions = [
            model(to_float(chunk, device)).argmax(1).cpu() for chunk in images_uint8.split(batch_size)
        ]
    return torch.cat(predictions)
