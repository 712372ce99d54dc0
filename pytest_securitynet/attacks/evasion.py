"""Evasion attacks (FGSM, L-inf PGD) and the accuracy drop they cause.

SecurityNet (Zhang et al., USENIX Security 2024, Appendix C) reports the target-task accuracy drop
under untargeted FGSM (Goodfellow et al., 2015) at eps 0.01, 0.03 and 0.1, white-box and black-box;
in the black-box setting the noise comes from an auxiliary model (ResNet-18 trained on the same
data), i.e. a transfer attack. PGD (Madry et al., 2018) is included as the stronger iterative
baseline. Images are floats in [0, 1]; eps is measured in that scale (eps 0.03 ~ 8/255).

``fgsm`` and ``pgd_linf`` are the plain fp32 references on one batch. ``run_evasion`` evaluates a
whole image set: the images stay on the device, batches are large, the PGD step never waits for
the host and, on CUDA, runs in bf16 autocast and channels_last and is replayed from a CUDA graph.
Accuracies are always measured with fp32 forward passes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .common import (
    GraphedStep,
    PhaseTimer,
    ResultRecord,
    attack_mode,
    autocast,
    autocast_dtype,
    cudnn_autotune,
    frozen_parameters,
    memory_format,
    pass_flops,
    resolve_device,
    seeded_generator,
    tflop_per_s,
    use_fast_path,
)

logger = logging.getLogger(__name__)

Attack = Literal["fgsm", "pgd"]

_ATTACK_PIXELS = {"cuda": 4096 * 32 * 32}
"""Images per attack batch on CUDA: 4096 32x32 images' worth of pixels (fewer for larger inputs)."""
_DEFAULT_BATCH_SIZE = 512


@dataclass
class EvasionResult(ResultRecord):
    """Clean and adversarial accuracy per eps (lists align with ``eps``), the settings used and the
    work done. ``phases``: setup, evaluation (clean accuracy) and attack (which includes scoring
    the adversarial batches on the target). ``gradient_passes``: forward+input-gradient passes per
    image."""

    attack: str
    eps: list[float]
    steps: int
    step_size: list[float]
    random_start: bool
    transfer: bool
    n_images: int
    batch_size: int
    seed: int
    amp: str | None
    channels_last: bool
    cuda_graph: bool
    clean_accuracy: float
    adversarial_accuracy: list[float]
    accuracy_drop: list[float]
    gradient_passes: int
    phases: dict[str, float]
    flops: float | None
    tflop_per_s: float | None
    clean_correct: torch.Tensor | None = field(default=None, repr=False)
    """Per image (bool, on the attack's device): whether the clean image is classified correctly (for intervals)."""
    adversarial_correct: list[torch.Tensor] | None = field(default=None, repr=False)
    """Per eps, per image: whether the adversarial image is still classified correctly."""

    def by_eps(self) -> dict[float, dict[str, float]]:
        """``{eps: {clean_accuracy, adversarial_accuracy, accuracy_drop}}`` (``evaluate_evasion``'s answer)."""
        return {
            eps: {"clean_accuracy": self.clean_accuracy, "adversarial_accuracy": adv, "accuracy_drop": drop}
            for eps, adv, drop in zip(self.eps, self.adversarial_accuracy, self.accuracy_drop)
        }


def _input_gradient(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
    amp: torch.dtype | None = None, channels_last: bool = False,
) -> torch.Tensor:
    """Gradient of the summed cross-entropy with respect to ``images`` (weights must be frozen)."""
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        with autocast(x.device, amp):
            logits = model(x.contiguous(memory_format=memory_format(channels_last)))
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
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

    Defaults: step size eps/4, uniform random start in the ball; returns the last iterate. The
    plain fp32 reference of the fast path in ``run_evasion``.
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


class _PgdSteps:
    """PGD's step on one batch shape over static buffers, so it can be replayed from a CUDA graph:
    x <- project(x + alpha * sign(grad)), with x, the bounds, the labels and alpha read in place."""

    def __init__(self, source: nn.Module, x: torch.Tensor, labels: torch.Tensor, *, amp: torch.dtype | None,
                 channels_last: bool, cuda_graph: bool) -> None:
        self.source, self.amp, self.channels_last = source, amp, channels_last
        self.x = torch.empty_like(x)
        self.low, self.high = torch.empty_like(x), torch.empty_like(x)
        self.labels = torch.empty_like(labels)
        self.alpha = torch.zeros((), device=x.device)
        self.run = GraphedStep(self._step, enabled=cuda_graph)

    def _step(self) -> None:
        grad = _input_gradient(self.source, self.x, self.labels, self.amp, self.channels_last)
        self.x.copy_(_project(self.x + self.alpha * grad.sign(), self.low, self.high))

    def attack(self, clean: torch.Tensor, labels: torch.Tensor, eps: float, steps: int,
               generator: torch.Generator) -> torch.Tensor:
        """``steps`` PGD steps from a uniform random start in the eps-ball (step size eps / 4)."""
        self.labels.copy_(labels)
        torch.sub(clean, eps, out=self.low).clamp_(0.0, 1.0)
        torch.add(clean, eps, out=self.high).clamp_(0.0, 1.0)
        self.x.copy_(_project(clean + _random_start(clean, eps, generator), self.low, self.high))
        self.alpha.fill_(eps / 4.0)
        for _ in range(steps):
            self.run()
        return self.x


@dataclass
class _Setup:
    """One evaluation's models, data on the device and fast-path settings."""

    model: nn.Module
    source: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    batch_size: int
    amp: torch.dtype | None
    channels_last: bool
    cuda_graph: bool


def _adversarial_batches(
    setup: _Setup, x: torch.Tensor, y: torch.Tensor, eps_values: Sequence[float], attack: Attack, steps: int,
    generator: torch.Generator, pgd: dict[tuple[int, ...], _PgdSteps],
) -> Iterator[torch.Tensor]:
    """Yield one adversarial batch per eps; FGSM reuses a single gradient for all eps."""
    if attack == "fgsm":
        sign = None
        for eps in eps_values:
            if eps == 0.0:
                yield x
                continue
            if sign is None:
                sign = _input_gradient(setup.source, x, y, setup.amp, setup.channels_last).sign_()
            yield (x + eps * sign).clamp_(0.0, 1.0)
        return
    shape = tuple(x.shape)
    if shape not in pgd:
        pgd[shape] = _PgdSteps(setup.source, x, y, amp=setup.amp, channels_last=setup.channels_last,
                               cuda_graph=setup.cuda_graph)
    for eps in eps_values:
        yield x if eps == 0.0 else pgd[shape].attack(x, y, eps, steps, generator)


def _default_batch_size(device: torch.device, shape: torch.Size) -> int:
    if device.type not in _ATTACK_PIXELS:
        return _DEFAULT_BATCH_SIZE
    return max(1, _ATTACK_PIXELS[device.type] // (shape[-1] * shape[-2]))


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Per image: whether `model` classifies it correctly."""
    with torch.no_grad():
        return model(x.contiguous(memory_format=memory_format(channels_last))).argmax(1) == y


def _validate(images_uint8: torch.Tensor, labels: torch.Tensor, attack: str) -> torch.Tensor:
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"attack must be 'fgsm' or 'pgd'; got {attack!r}")
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"images_uint8 must be uint8 [N, C, H, W]; got {images_uint8.dtype}")
    labels = torch.as_tensor(labels)
    if labels.shape[0] != images_uint8.shape[0] or images_uint8.shape[0] == 0:
        raise ValueError("images and labels must be non-empty and of equal length")
    return labels


def run_evasion(
    model: nn.Module,
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    eps_list: Sequence[float],
    *,
    attack: Attack = "fgsm",
    steps: int = 10,
    source_model: nn.Module | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    amp: bool | None = None,
    channels_last: bool | None = None,
    cuda_graph: bool | None = None,
) -> EvasionResult:
    """Accuracy of ``model`` on clean and adversarial versions of a uint8 image set, per eps.

    White-box by default; with ``source_model`` the perturbation is computed on the source and
    only evaluated on ``model`` (SecurityNet's black-box/transfer setting, Appendix C). PGD takes
    ``steps`` steps of eps/4 from a random start. The images are uploaded once; each batch
    (``batch_size``, default 512, or 4096 32x32 images' worth of pixels on CUDA) is attacked at
    every eps. ``amp`` (bf16 autocast of the gradient passes), ``channels_last`` and ``cuda_graph``
    (PGD step replay) default to on for CUDA only; accuracies use fp32 passes. Models are moved to
    ``device`` (default: the model's).
    """
    labels = _validate(images_uint8, labels, attack)
    if attack == "pgd" and steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    eps_values = [_check_eps(e) for e in eps_list]
    device = resolve_device(device, model)
    timer = PhaseTimer(device)
    source = model if source_model is None else source_model
    fast_layout = use_fast_path(channels_last, device)
    with contextlib.ExitStack() as stack:
        with timer.phase("setup"):
            model.to(device)
            source.to(device)
            for net in {id(m): m for m in (model, source)}.values():
                stack.enter_context(attack_mode(net, channels_last=fast_layout))
            stack.enter_context(cudnn_autotune(device))
            setup = _Setup(model, source, images_uint8.to(device), labels.to(device, torch.long),
                           batch_size or _default_batch_size(device, images_uint8.shape),
                           autocast_dtype(amp, device), fast_layout,
                           use_fast_path(cuda_graph, device) and device.type == "cuda")
            generator = seeded_generator(seed, device)
        with timer.phase("evaluation"):
            clean_mask = torch.cat([_correct(model, x.float().div_(255), y, fast_layout)
                                    for x, y in zip(setup.images.split(setup.batch_size), setup.labels.split(setup.batch_size))])
            clean_correct = clean_mask.sum()
        with timer.phase("attack"):
            adv_correct = torch.zeros(len(eps_values), dtype=torch.long, device=device)
            adv_masks: list[list[torch.Tensor]] = [[] for _ in eps_values]
            pgd: dict[tuple[int, ...], _PgdSteps] = {}
            for x, y in zip(setup.images.split(setup.batch_size), setup.labels.split(setup.batch_size)):
                x = x.float().div_(255)
                for i, x_adv in enumerate(_adversarial_batches(setup, x, y, eps_values, attack, steps, generator, pgd)):
                    mask = _correct(model, x_adv, y, fast_layout)
                    adv_correct[i] += mask.sum()
                    adv_masks[i].append(mask)
    result = _result(setup, attack, eps_values, steps, source_model is not None, seed, clean_correct, adv_correct,
                     timer, graphed=any(p.run.captured for p in pgd.values()))
    result.clean_correct = clean_mask  # on the device: moved only by whoever reads them
    result.adversarial_correct = [torch.cat(masks) for masks in adv_masks]
    return result


def _result(setup: _Setup, attack: str, eps_values: list[float], steps: int, transfer: bool, seed: int,
            clean_correct: torch.Tensor, adv_correct: torch.Tensor, timer: PhaseTimer, graphed: bool) -> EvasionResult:
    n = setup.images.shape[0]
    clean_acc = int(clean_correct) / n
    adv_accs = (adv_correct.double() / n).tolist()
    attacked = [e for e in eps_values if e > 0]
    gradient_passes = (steps * len(attacked) if attack == "pgd" else int(bool(attacked)))
    source_flops = pass_flops(setup.source, tuple(setup.images.shape[1:]))
    target_flops = pass_flops(setup.model, tuple(setup.images.shape[1:]))
    flops = None
    if source_flops is not None and target_flops is not None:
        flops = n * (gradient_passes * sum(source_flops) + len(eps_values) * target_flops[0])
    logger.info("evasion %s (transfer=%s) on %d images: clean %.4f, adversarial %s, %.2fs",
                attack, transfer, n, clean_acc, dict(zip(eps_values, adv_accs)), timer.total)
    return EvasionResult(
        attack=attack, eps=eps_values, steps=steps if attack == "pgd" else 1,
        step_size=[e / 4.0 if attack == "pgd" else e for e in eps_values], random_start=attack == "pgd",
        transfer=transfer, n_images=n, batch_size=setup.batch_size, seed=seed,
        amp=None if setup.amp is None else str(setup.amp).removeprefix("torch."), channels_last=setup.channels_last,
        cuda_graph=graphed, clean_accuracy=clean_acc, adversarial_accuracy=adv_accs,
        accuracy_drop=[clean_acc - adv for adv in adv_accs], gradient_passes=gradient_passes,
        phases=dict(timer.phases), flops=flops, tflop_per_s=tflop_per_s(flops, timer.phases["attack"]),
    )


def evaluate_evasion(
    model: nn.Module, images_uint8: torch.Tensor, labels: torch.Tensor, eps_list: Sequence[float], **options: Any,
) -> dict[float, dict[str, float]]:
    """:func:`run_evasion` (same keyword options) answering with its accuracies as
    ``{eps: {clean_accuracy, adversarial_accuracy, accuracy_drop}}``."""
    return run_evasion(model, images_uint8, labels, eps_list, **options).by_eps()
