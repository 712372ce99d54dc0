"""Evasion attacks (FGSM, L-inf PGD) and the accuracy drop they cause.

SecurityNet (Zhang et al., USENIX Security 2024, Appendix C) reports the target-task accuracy drop
under untargeted FGSM (Goodfellow et al., 2015) at eps 0.01, 0.03 and 0.1, white-box and black-box;
in the black-box setting the noise comes from an auxiliary model (ResNet-18 trained on the same
data), i.e. a transfer attack. PGD (Madry et al., 2018) is included as the stronger iterative
baseline. Images are floats in [0, 1]; eps is measured in that scale (eps 0.03 ~ 8/255).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .common import frozen_parameters, resolve_device, seeded_generator

logger = logging.getLogger(__name__)

Attack = Literal["fgsm", "pgd"]


def _input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy with respect to ``images`` (weights must be frozen)."""
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x).float(), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must lie in [0, 1] (images are in [0, 1]); got {eps}")
    return eps


def _project(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    return torch.minimum(torch.maximum(x, low), high)


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Untargeted FGSM: one signed-gradient step of size ``eps``, clamped to [0, 1].

    ``images`` are floats in [0, 1] on the model's device; ``eps == 0`` returns an unchanged copy.
    """
    eps = _check_eps(eps)
    if eps == 0.0:
        return images.detach().clone()
    with frozen_parameters(model):
        grad = _input_gradient(model, images, labels)
    return (images.detach() + eps * grad.sign()).clamp_(0.0, 1.0)


def _random_start(
    images: torch.Tensor, eps: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Uniform noise in [-eps, eps], drawn on the generator's device and moved to the images'."""
    noise_device = generator.device if generator is not None else images.device
    noise = torch.rand(images.shape, generator=generator, device=noise_device, dtype=images.dtype)
    return noise.to(images.device).mul_(2.0).sub_(1.0).mul_(eps)


def pgd_linf(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted L-inf PGD (Madry et al.): ``steps`` signed-gradient ascent steps on the
    cross-entropy, each projected onto the eps-ball around ``images`` intersected with [0, 1].

    Defaults: step size eps/4, uniform random start in the ball; returns the last iterate.
    """
    eps = _check_eps(eps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    if eps == 0.0:
        return images.detach().clone()
    alpha = eps / 4.0 if step_size is None else float(step_size)
    clean = images.detach()
    low = (clean - eps).clamp_(0.0, 1.0)
    high = (clean + eps).clamp_(0.0, 1.0)
    x = clean.clone()
    if random_start:
        x = _project(x + _random_start(clean, eps, generator), low, high)
    with frozen_parameters(model):
        for _ in range(steps):
            grad = _input_gradient(model, x, labels)
            x = _project(x + alpha * grad.sign(), low, high)
    return x


def _adversarial_batches(
    source: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_values: Sequence[float],
    attack: Attack,
    steps: int,
    generator: torch.Generator,
) -> Iterator[torch.Tensor]:
    """Yield one adversarial batch per eps; FGSM reuses a single gradient for all eps."""
    if attack == "fgsm":
        sign = None
        for eps in eps_values:
            if eps == 0.0:
                yield x
                continue
            if sign is None:
                sign = _input_gradient(source, x, y).sign_()
            yield (x + eps * sign).clamp_(0.0, 1.0)
    else:
        for eps in eps_values:
            yield pgd_linf(source, x, y, eps, steps=steps, generator=generator)


def evaluate_evasion(
    model: nn.Module,
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    eps_list: Sequence[float],
    *,
    attack: Attack = "fgsm",
    steps: int = 10,
    source_model: nn.Module | None = None,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> dict[float, dict[str, float]]:
    """Accuracy of ``model`` on clean and adversarial versions of a uint8 image set, per eps.

    White-box by default; with ``source_model`` the perturbation is computed on the source and
    only evaluated on ``model`` (SecurityNet's black-box/transfer setting, Appendix C). Each batch
    is uploaded once and attacked at every eps; models are moved to ``device`` (default: the
    model's). Returns ``{eps: {clean_accuracy, adversarial_accuracy, accuracy_drop}}``.
    """
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"attack must be 'fgsm' or 'pgd'; got {attack!r}")
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"images_uint8 must be uint8 [N, C, H, W]; got {images_uint8.dtype}")
    labels = torch.as_tensor(labels)
    if labels.shape[0] != images_uint8.shape[0] or images_uint8.shape[0] == 0:
        raise ValueError("images and labels must be non-empty and of equal length")
    eps_values = [_check_eps(e) for e in eps_list]
    device = resolve_device(device, model)
    source = (model if source_model is None else source_model).to(device)
    model.to(device)
    generator = seeded_generator(seed, device)
    clean_correct = torch.zeros((), dtype=torch.long, device=device)
    adv_correct = torch.zeros(len(eps_values), dtype=torch.long, device=device)
    n = images_uint8.shape[0]
    with frozen_parameters(source):
        for start in range(0, n, batch_size):
            x = images_uint8[start : start + batch_size].to(device, non_blocking=True)
            x = x.float().div_(255)
            y = labels[start : start + batch_size].to(device, dtype=torch.long, non_blocking=True)
            with torch.no_grad():
                clean_correct += (model(x).argmax(1) == y).sum()
            batches = _adversarial_batches(source, x, y, eps_values, attack, steps, generator)
            for i, x_adv in enumerate(batches):
                with torch.no_grad():
                    adv_correct[i] += (model(x_adv).argmax(1) == y).sum()
    clean_acc = clean_correct.item() / n
    adv_accs = (adv_correct.double() / n).tolist()
    logger.info("evasion %s (transfer=%s) on %d images: clean %.4f, adversarial %s",
                attack, source_model is not None, n, clean_acc, dict(zip(eps_values, adv_accs)))
    return {
        eps: {
            "clean_accuracy": clean_acc,
            "adversarial_accuracy": adv,
            "accuracy_drop": clean_acc - adv,
        }
        for eps, adv in zip(eps_values, adv_accs)
    }
