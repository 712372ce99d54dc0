"""A fast classifier trainer shared by every attack that trains a model (stealing surrogates, the
evasion transfer source, membership-inference reference models).

SGD with momentum and weight decay, a cosine (or constant) per-step schedule, batched random crop
and flip on the device. Built for throughput: the data and targets stay on the device, an epoch is
a device-side permutation sliced into batches, the loss is summed on the device (one host read at
the end) and on CUDA the model runs channels_last with bf16 autocast and a fused SGD step under
cuDNN autotuning; ``compile_model`` adds ``torch.compile``. FLOPs are counted on a meta-device copy.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .common import (
    ResultRecord,
    autocast,
    autocast_dtype,
    cudnn_autotune,
    memory_format,
    meta_copy,
    resolve_device,
    seeded_generator,
    tflop_per_s,
    use_fast_path,
)

__all__ = ["REFERENCE_BATCH_SIZE", "TrainStats", "random_crop_flip", "train_classifier_fast", "training_flops"]

logger = logging.getLogger(__name__)

Schedule = Literal["cosine", "constant"]

REFERENCE_BATCH_SIZE = 128
"""Batch size the paper's learning rate is taken to refer to (linear scaling, Goyal et al. 2017)."""
CUDA_BATCH_SIZE = 512
"""Default batch on CUDA (throughput); elsewhere ``REFERENCE_BATCH_SIZE``."""


@dataclass
class TrainStats(ResultRecord):
    """How a model was trained (the settings actually used) and how fast."""

    n_samples: int
    epochs: int
    steps: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    augment: bool
    hflip: bool
    soft_targets: bool
    seed: int
    device: str
    amp: str | None
    channels_last: bool
    compiled: bool | str
    final_train_loss: float
    train_time_s: float
    samples_per_s: float
    flops: float | None
    tflop_per_s: float | None


def random_crop_flip(
    images: torch.Tensor, pad: int, hflip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample random crop after zero padding by ``pad`` pixels, plus random horizontal flips,
    as batched gathers (no per-sample Python). Works on any dtype; returns channels_last layout."""
    b, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad)).permute(0, 2, 3, 1)
    dy = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
    rows = dy + torch.arange(h, device=dev)
    cols = dx + torch.arange(w, device=dev)
    if hflip:
        flip = torch.rand((b, 1), device=dev, generator=generator) < 0.5
        cols = torch.where(flip, cols.flip(1), cols)
    batch_index = torch.arange(b, device=dev)[:, None, None]
    crops = padded[batch_index, rows[:, :, None], cols[:, None, :]]
    return crops.permute(0, 3, 1, 2)


def training_flops(
    model: nn.Module, input_shape: tuple[int, int, int], n_samples: int, epochs: int
) -> float:
    """FLOPs of training ``model`` on ``n_samples`` images of ``input_shape`` (C, H, W) for
    ``epochs``: one forward+backward counted with FlopCounterMode on a copy placed on the meta
    device (no compute), scaled. Counts matmuls and convolutions only, so divide by the measured
    training time for a conservative achieved-TFLOP/s."""
    probe = meta_copy(model).train()
    x = torch.empty((2, *input_shape), device="meta")
    with FlopCounterMode(display=False) as counter:
        probe(x).float().sum().backward()
    return counter.get_total_flops() / 2 * n_samples * epochs


def _maybe_compile(model: nn.Module, compile_model: bool | str) -> nn.Module:
    if not compile_model:
        return model
    mode = compile_model if isinstance(compile_model, str) else None
    return torch.compile(model, mode=mode)


def _lr_at(step: int, total_steps: int, base_lr: float, schedule: Schedule) -> float:
    if schedule == "constant":
        return base_lr
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * step / total_steps))


def _train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x_all: torch.Tensor,
    t_all: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    base_lr: float,
    schedule: Schedule,
    pad: int,
    hflip: bool,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
    generator: torch.Generator,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """Run the SGD epochs; returns the mean training loss of the last epoch (the one host read)."""
    n = x_all.shape[0]
    device = x_all.device
    n_batches = math.ceil(n / batch_size)
    total_steps = epochs * n_batches
    layout = memory_format(channels_last)
    scale = 1.0 / 255 if x_all.dtype == torch.uint8 else 1.0
    epoch_loss = torch.zeros((), device=device)
    step = 0
    for epoch in range(epochs):
        loss_sum = torch.zeros((), device=device)
        perm = torch.randperm(n, device=device, generator=generator)
        for idx in torch.tensor_split(perm, n_batches):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, base_lr, schedule)
            xb = x_all[idx]
            if pad > 0 or hflip:
                xb = random_crop_flip(xb, pad, hflip, generator)
            xb = xb.contiguous(memory_format=layout).float()
            if scale != 1.0:
                xb = xb.div_(255)
            with autocast(device, amp_dtype):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), t_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * idx.shape[0]
            step += 1
        epoch_loss = loss_sum / n
        if progress is not None:
            progress(epoch + 1, epochs)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("training epoch %d/%d: loss %.4f", epoch + 1, epochs, epoch_loss.item())
    return float(epoch_loss.item())


def train_classifier_fast(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: Schedule = "cosine",
    scale_lr: bool = True,
    augment: bool | None = None,
    hflip: bool = True,
    amp: bool | None = None,
    channels_last: bool | None = None,
    compile_model: bool | str = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, TrainStats]:
    """Train ``model`` (in place, moved to ``device``) on ``images`` and ``targets``; returns it in
    eval mode with its :class:`TrainStats`.

    - ``images``: uint8 [N, C, H, W] (divided by 255) or float in [0, 1]; the model takes [0, 1]
      floats (normalisation is the model's job).
    - ``targets``: int64 labels [N] (cross-entropy) or float posteriors [N, K] (soft cross-entropy).
    - SGD with ``momentum`` and ``weight_decay``; ``schedule`` "cosine" anneals per step to 0,
      "constant" keeps ``lr``. ``batch_size`` defaults to 512 on CUDA and 128 elsewhere; with
      ``scale_lr`` the rate is multiplied by ``batch_size / 128`` (linear scaling).
    - ``augment``: random crop (pad = H/8) and, if ``hflip``, horizontal flips, on the device;
      default on for inputs of at least 32 px.
    - ``amp`` (bf16 autocast) and ``channels_last`` default to on for CUDA and off elsewhere;
      CUDA also gets a fused SGD step and cuDNN autotuning. ``compile_model`` wraps the model in
      ``torch.compile`` (a string is its ``mode``); compilation takes tens of seconds.
    - ``progress``: called as ``progress(epochs_done, epochs)`` after every epoch (no host sync).
    - Deterministic for a given seed and initial weights on the CPU.
    """
    if images.ndim != 4 or images.shape[0] == 0 or epochs < 1:
        raise ValueError("training needs images [N, C, H, W] with N >= 1 and at least one epoch")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant'; got {schedule!r}")
    if targets.shape[0] != images.shape[0]:
        raise ValueError(f"{targets.shape[0]} targets for {images.shape[0]} images")
    dev = resolve_device(device, model)
    on_cuda = dev.type == "cuda"
    n, _, height, _ = images.shape
    batch_size = (CUDA_BATCH_SIZE if on_cuda else REFERENCE_BATCH_SIZE) if batch_size is None else batch_size
    base_lr = lr * batch_size / REFERENCE_BATCH_SIZE if scale_lr else lr
    augment = height >= 32 if augment is None else augment
    layout = use_fast_path(channels_last, dev)
    amp_dtype = autocast_dtype(amp, dev)

    model.to(dev)
    if layout:
        model.to(memory_format=torch.channels_last)
    x_all = images.to(dev, non_blocking=True)
    t_all = targets.to(dev, torch.float32 if targets.is_floating_point() else torch.long)
    optimizer = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=momentum,
                                weight_decay=weight_decay, fused=True if on_cuda else None)
    generator = seeded_generator(seed, dev)
    train_model = _maybe_compile(model, compile_model)
    model.train()
    start = time.perf_counter()
    with cudnn_autotune(dev):
        final_loss = _train_epochs(
            train_model, optimizer, x_all, t_all, epochs=epochs, batch_size=batch_size, base_lr=base_lr,
            schedule=schedule, pad=max(1, height // 8) if augment else 0, hflip=augment and hflip,
            amp_dtype=amp_dtype, channels_last=layout, generator=generator, progress=progress,
        )
    train_time = time.perf_counter() - start
    model.eval()
    try:
        flops = training_flops(model, tuple(images.shape[1:]), n, epochs)
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        logger.debug("no training FLOP count for %s: %s", type(model).__name__, exc)
        flops = None
    stats = TrainStats(
        n_samples=int(n), epochs=epochs, steps=epochs * math.ceil(n / batch_size), batch_size=batch_size,
        lr=base_lr, momentum=momentum, weight_decay=weight_decay, schedule=schedule, augment=bool(augment),
        hflip=bool(augment and hflip), soft_targets=bool(t_all.is_floating_point()), seed=seed, device=str(dev),
        amp=None if amp_dtype is None else str(amp_dtype).removeprefix("torch."), channels_last=layout,
        compiled=compile_model, final_train_loss=final_loss, train_time_s=train_time,
        samples_per_s=epochs * n / train_time, flops=flops, tflop_per_s=tflop_per_s(flops, train_time),
    )
    logger.info("trained %s on %d samples in %.2f s (%d epochs, loss %.4f, %s TFLOP/s)", type(model).__name__, n,
                train_time, epochs, final_loss, "?" if stats.tflop_per_s is None else f"{stats.tflop_per_s:.1f}")
    return model, stats
