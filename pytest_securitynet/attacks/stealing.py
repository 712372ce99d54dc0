"""Knockoff-style model stealing (SecurityNet §3.1 and Appendix B; Orekondy et al., CVPR 2019).

The adversary queries the black-box target with an auxiliary set, records the returned
posteriors and trains a surrogate to reproduce them (soft cross-entropy), or only the top-1
labels in the label-only variant. SecurityNet's defaults: ResNet-18 surrogate, SGD with learning
rate 0.01 for 30 epochs, half of the target's training set as queries; metrics are attack
accuracy (surrogate vs. true labels) and agreement (surrogate vs. target predictions).

Training is :func:`~pytest_securitynet.attacks.training.train_classifier_fast` (data on the
device, no host synchronisation inside an epoch, channels_last + bf16 autocast + fused SGD on
CUDA). ``run_model_stealing`` times the whole attack in phases (queries, training, evaluation)
and returns a :class:`StealingResult` with the settings, metrics, FLOPs and TFLOP/s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .common import (
    PhaseTimer,
    ResultRecord,
    check_uint8,
    images_per_forward,
    memory_format,
    resolve_device,
    use_fast_path,
)
from .surrogates import Resize, build_surrogate
from .training import (
    REFERENCE_BATCH_SIZE,
    Schedule,
    TrainStats,
    random_crop_flip,
    train_classifier_fast,
    training_flops,
)

__all__ = [
    "REFERENCE_BATCH_SIZE",
    "StealingResult",
    "evaluate_surrogate",
    "query_target",
    "random_crop_flip",
    "run_model_stealing",
    "steal",
    "train_surrogate",
    "training_flops",
]

logger = logging.getLogger(__name__)

SurrogateSpec = str | nn.Module | Callable[[int, int, int], nn.Module]


@dataclass
class StealingResult(ResultRecord):
    """One model-stealing run: metrics, the training settings actually used, phases (queries,
    training, evaluation; wall seconds) and the training FLOPs."""

    surrogate: str
    n_queries: int
    label_only: bool
    input_size: int
    attack_accuracy: float
    agreement: float
    target_accuracy: float
    training: TrainStats
    phases: dict[str, float]
    flops: float | None
    tflop_per_s: float | None


def query_target(
    target: nn.Module,
    images_uint8: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Query the black-box target: softmax posteriors [N, K] (float32, on ``device``).

    The images are uploaded once; ``batch_size`` images per pass (default 2048 32x32 images on
    the CPU, 16384 on CUDA). Uses ``no_grad`` rather than ``inference_mode`` so the result can
    serve as training targets."""
    check_uint8(images_uint8, "images_uint8")
    device = resolve_device(device, target)
    target.to(device)
    chunk = images_per_forward(batch_size, device, tuple(images_uint8.shape[1:]))
    images = images_uint8.to(device)
    with torch.no_grad():
        return torch.cat([target(x.float().div_(255)).float().softmax(1) for x in images.split(chunk)])


def _prepare_targets(
    target_outputs: torch.Tensor, n: int, num_classes: int, label_only: bool, device: torch.device
) -> torch.Tensor:
    """Posteriors [N, K] (float32) for soft training, or top-1 labels [N] (int64) when label-only."""
    t = torch.as_tensor(target_outputs)
    if t.shape[0] != n:
        raise ValueError(f"target_outputs has {t.shape[0]} rows for {n} queries")
    if t.ndim == 2:
        if t.shape[1] != num_classes:
            raise ValueError(f"target_outputs has {t.shape[1]} classes, expected {num_classes}")
        if label_only:
            return t.argmax(1).to(device)
        t = t.to(device, torch.float32)
        sums = t.sum(1)
        if bool((t < 0).any()) or bool((sums <= 0).any()) or bool((sums > 1 + 1e-2).any()):
            raise ValueError("target_outputs must be posteriors (rows >= 0 summing to at most 1); "
                             "apply softmax to logits first")
        # A top-k API returns part of the distribution; train on it renormalised.
        return t / sums[:, None]
    if t.ndim == 1 and not t.is_floating_point():
        if not label_only:
            raise ValueError("1-D target labels need label_only=True; soft training needs posteriors")
        if bool((t < 0).any()) or bool((t >= num_classes).any()):
            raise ValueError(f"target labels must lie in [0, {num_classes})")
        return t.to(device, torch.long)
    raise ValueError(f"target_outputs must be [N, K] posteriors or [N] labels; got {tuple(t.shape)}")


def _make_surrogate(
    spec: SurrogateSpec, num_classes: int, input_size: int, in_channels: int, seed: int
) -> nn.Module:
    """Instantiate the surrogate with the CPU RNG seeded, leaving the global RNG state intact."""
    if isinstance(spec, nn.Module):
        return spec
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(spec, str):
            return build_surrogate(spec, num_classes, input_size, in_channels)
        if callable(spec):
            return spec(num_classes, input_size, in_channels)
    raise TypeError(f"surrogate must be a name, an nn.Module or a builder; got {type(spec)!r}")


def train_surrogate(
    query_images_uint8: torch.Tensor,
    target_outputs: torch.Tensor,
    *,
    num_classes: int,
    surrogate: SurrogateSpec = "resnet18",
    input_size: int | None = None,
    epochs: int = 30,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: Schedule = "cosine",
    batch_size: int | None = None,
    scale_lr: bool = True,
    label_only: bool = False,
    augment: bool | None = None,
    hflip: bool = True,
    device: torch.device | str | None = None,
    seed: int = 0,
    amp: bool | None = None,
    channels_last: bool | None = None,
    compile_model: bool | str = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, TrainStats]:
    """Build and train a surrogate on the target's answers; returns ``(surrogate, TrainStats)``.

    Paper defaults (SecurityNet §3.1): ResNet-18, SGD lr 0.01, momentum 0.9, 30 epochs; weight
    decay 5e-4 is the usual CIFAR value. Loss: soft cross-entropy between the surrogate's
    log-softmax and the target posteriors, or cross-entropy on top-1 labels if ``label_only``.

    - ``surrogate``: a name for :func:`build_surrogate` (normalising, takes [0, 1] images), an
      ``nn.Module`` (trained in place), or a builder ``f(num_classes, input_size, in_channels)``.
    - ``input_size``: side the surrogate is built for (default: the query images'); if it differs,
      a :class:`Resize` is prepended so the returned model still takes the query resolution.
    - ``schedule``: the paper states no schedule; ``"cosine"`` (per-step annealing to 0) needs no
      milestones and does better than a constant rate in a 30-epoch budget; ``"constant"`` is the
      literal reading of the paper.
    - ``batch_size``: default 512 on CUDA (throughput), 128 elsewhere. With ``scale_lr`` the
      rate is multiplied by ``batch_size / 128`` so 512 keeps the paper's per-sample step size
      (0.04 at 512) with 4x fewer steps.
    - ``augment``: random crop (pad = size/8) and, if ``hflip``, horizontal flips on the device;
      default on for surrogates built for >= 32 px (turn ``hflip`` off for digit data such as SVHN).
    - ``amp`` (bf16 autocast) and ``channels_last`` default to on for CUDA only; CUDA also gets a
      fused SGD step and cuDNN autotuning. ``compile_model`` wraps the surrogate in
      ``torch.compile`` (a string is passed as its ``mode``, e.g. ``"max-autotune-no-cudagraphs"``);
      compilation takes tens of seconds, so it pays off only for long runs.
    - ``progress``: called as ``progress(epochs_done, epochs)`` after every epoch.
    """
    check_uint8(query_images_uint8, "query_images_uint8")
    n, in_channels, height, _ = query_images_uint8.shape
    if n == 0 or epochs < 1:
        raise ValueError("steal needs at least one query and one epoch")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant'; got {schedule!r}")
    dev = resolve_device(device, surrogate if isinstance(surrogate, nn.Module) else None)
    input_size = height if input_size is None else int(input_size)
    model = _make_surrogate(surrogate, num_classes, input_size, in_channels, seed)
    if input_size != height:
        model = nn.Sequential(Resize(input_size), model)
    targets = _prepare_targets(target_outputs, n, num_classes, label_only, dev)
    return train_classifier_fast(
        model, query_images_uint8, targets, epochs=epochs, lr=lr, batch_size=batch_size, device=dev,
        seed=seed, momentum=momentum, weight_decay=weight_decay, schedule=schedule, scale_lr=scale_lr,
        augment=input_size >= 32 if augment is None else augment, hflip=hflip, amp=amp,
        channels_last=channels_last, compile_model=compile_model, progress=progress,
    )


def steal(
    query_images_uint8: torch.Tensor,
    target_outputs: torch.Tensor,
    *,
    amp: bool = True,
    **training: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`train_surrogate` (same keyword options) with the answer of earlier versions:
    ``(surrogate, info)``.

    ``amp`` turns bf16 autocast on for CUDA (the CPU always runs fp32 here). ``info``:
    train_time_s (training loop), total_time_s (including setup), epochs, queries, steps,
    batch_size, lr, final_train_loss, samples_per_s, label_only, device, amp, flops, tflop_per_s.
    """
    start = time.perf_counter()
    model, stats = train_surrogate(query_images_uint8, target_outputs, amp=None if amp else False, **training)
    info = {
        "train_time_s": stats.train_time_s, "total_time_s": time.perf_counter() - start, "epochs": stats.epochs,
        "queries": stats.n_samples, "steps": stats.steps, "batch_size": stats.batch_size, "lr": stats.lr,
        "final_train_loss": stats.final_train_loss, "samples_per_s": stats.samples_per_s,
        "label_only": training.get("label_only", False), "device": stats.device, "amp": stats.amp is not None,
        "flops": stats.flops, "tflop_per_s": stats.tflop_per_s,
    }
    return model, info


def evaluate_surrogate(
    surrogate: nn.Module,
    target: nn.Module,
    test_images_uint8: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    channels_last: bool | None = None,
) -> dict[str, float]:
    """Attack accuracy (surrogate vs. labels), agreement (surrogate vs. target top-1) and the
    target's accuracy on a uint8 test set (Jagielski et al.'s metrics, as in SecurityNet §3.1).

    fp32 passes over the test set uploaded once, ``batch_size`` images per pass (default 2048
    32x32 images on the CPU, 16384 on CUDA); ``channels_last`` defaults to on for CUDA only."""
    check_uint8(test_images_uint8, "test_images_uint8")
    labels = torch.as_tensor(test_labels)
    n = test_images_uint8.shape[0]
    if n == 0 or labels.shape[0] != n:
        raise ValueError("test images and labels must be non-empty and of equal length")
    device = resolve_device(device, surrogate)
    layout = memory_format(use_fast_path(channels_last, device))
    surrogate.to(device).eval()
    target.to(device).eval()
    chunk = images_per_forward(batch_size, device, tuple(test_images_uint8.shape[1:]))
    counts = torch.zeros(3, dtype=torch.long, device=device)
    with torch.inference_mode():
        for x, y in zip(test_images_uint8.to(device).split(chunk), labels.to(device, torch.long).split(chunk)):
            x = x.float().div_(255).contiguous(memory_format=layout)
            s_pred = surrogate(x).argmax(1)
            t_pred = target(x).argmax(1)
            counts += torch.stack([(s_pred == y).sum(), (s_pred == t_pred).sum(), (t_pred == y).sum()])
    attack_acc, agreement, target_acc = (counts.double() / n).tolist()
    return {"attack_accuracy": attack_acc, "agreement": agreement, "target_accuracy": target_acc}


def run_model_stealing(
    answer_queries: Callable[[], torch.Tensor] | torch.Tensor,
    query_images_uint8: torch.Tensor,
    target_model: nn.Module,
    test_images_uint8: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    surrogate: str | SurrogateSpec = "resnet18",
    label_only: bool = False,
    device: torch.device | str | None = None,
    **training: Any,
) -> tuple[nn.Module, StealingResult]:
    """The whole attack, timed in phases: query the target (``answer_queries()`` returns the
    posteriors or labels for ``query_images_uint8``; a tensor is taken as already answered),
    train the surrogate (:func:`train_surrogate`; ``training`` holds its keyword arguments:
    epochs, lr, momentum, weight_decay, schedule, batch_size, augment, hflip, seed, amp,
    channels_last, compile_model ...) and evaluate it against the target on the test set."""
    device = resolve_device(device, target_model)
    timer = PhaseTimer(device)
    with timer.phase("queries"):
        answers = answer_queries() if callable(answer_queries) else answer_queries
    with timer.phase("training"):
        model, stats = train_surrogate(query_images_uint8, answers, num_classes=num_classes, surrogate=surrogate,
                                       label_only=label_only, device=device, **training)
    with timer.phase("evaluation"):
        scores = evaluate_surrogate(model, target_model, test_images_uint8, test_labels, device=device)
    name = surrogate if isinstance(surrogate, str) else type(model).__name__
    result = StealingResult(
        surrogate=name, n_queries=stats.n_samples, label_only=label_only,
        input_size=int(training.get("input_size") or query_images_uint8.shape[-2]), **scores, training=stats,
        phases=dict(timer.phases), flops=stats.flops, tflop_per_s=stats.tflop_per_s,
    )
    logger.info("model stealing (%s, %d queries): agreement %.4f, %s", name, stats.n_samples, scores["agreement"],
                ", ".join(f"{k} {v:.2f}s" for k, v in timer.phases.items()))
    return model, result
