"""Knockoff-style model stealing (SecurityNet §3.1 and Appendix B; Orekondy et al., CVPR 2019).

The adversary queries the black-box target with an auxiliary set, records the returned
posteriors and trains a surrogate to reproduce them (soft cross-entropy), or only the top-1
labels in the label-only variant. SecurityNet's defaults: ResNet-18 surrogate, SGD with learning
rate 0.01 for 30 epochs, half of the target's training set as queries; metrics are attack
accuracy (surrogate vs. true labels) and agreement (surrogate vs. target predictions).

The training loop is built for throughput: queries and targets stay on the device, each epoch is
a device-side permutation sliced into batches, augmentation is batched tensor ops, and on CUDA
the surrogate runs in channels_last with bf16 autocast and a fused SGD step, with no host
synchronisation inside an epoch.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pytest_securitynet.attacks.surrogates import Resize, build_surrogate

logger = logging.getLogger(__name__)

SurrogateSpec = str | nn.Module | Callable[[int, int, int], nn.Module]
Schedule = Literal["cosine", "constant"]

REFERENCE_BATCH_SIZE = 128
"""Batch size the paper's learning rate is taken to refer to (linear scaling, Goyal et al. 2017)."""


def _resolve_device(device: torch.device | str | None, model: nn.Module | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(model.parameters(), None) if model is not None else None
    return param.device if param is not None else torch.device("cpu")


def _check_uint8(images: torch.Tensor, name: str) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"{name} must be a uint8 tensor [N, C, H, W]; got {images.dtype} "
                         f"{tuple(images.shape)}")


def query_target(
    target: nn.Module,
    images_uint8: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 512,
) -> torch.Tensor:
    """Query the black-box target: softmax posteriors [N, K] (float32, on ``device``).

    Uses ``no_grad`` rather than ``inference_mode`` so the result can serve as training targets."""
    _check_uint8(images_uint8, "images_uint8")
    device = _resolve_device(device, target)
    target.to(device)
    outputs = []
    with torch.no_grad():
        for start in range(0, images_uint8.shape[0], batch_size):
            x = images_uint8[start : start + batch_size].to(device, non_blocking=True)
            outputs.append(target(x.float().div_(255)).float().softmax(1))
    return torch.cat(outputs)


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
    """Run the SGD epochs; returns the mean training loss of the last epoch."""
    n = x_all.shape[0]
    device = x_all.device
    n_batches = math.ceil(n / batch_size)
    total_steps = epochs * n_batches
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
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
            xb = xb.contiguous(memory_format=memory_format).float().div_(255)
            with autocast:
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
            logger.debug("stealing epoch %d/%d: loss %.4f", epoch + 1, epochs, epoch_loss.item())
    return float(epoch_loss.item())


def steal(
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
    amp: bool = True,
    compile_model: bool | str = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a surrogate on the target's answers to the queries; returns ``(surrogate, info)``.

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
      default on for inputs >= 32 px (turn ``hflip`` off for digit data such as SVHN).
    - On CUDA: channels_last, bf16 autocast if ``amp``, fused SGD, cuDNN autotuning; CPU runs
      fp32. ``compile_model`` wraps the surrogate in ``torch.compile`` (a string is passed as its
      ``mode``, e.g. ``"max-autotune-no-cudagraphs"``); compilation takes tens of seconds, so it
      pays off only for long runs.
    - ``progress``: called as ``progress(epochs_done, epochs)`` after every epoch (no host sync).

    ``info``: train_time_s (training loop), total_time_s (including setup), epochs, queries,
    steps, batch_size, lr, final_train_loss, samples_per_s, label_only, device, amp.
    """
    t_start = time.perf_counter()
    _check_uint8(query_images_uint8, "query_images_uint8")
    n, in_channels, height, _ = query_images_uint8.shape
    if n == 0 or epochs < 1:
        raise ValueError("steal needs at least one query and one epoch")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant'; got {schedule!r}")
    dev = _resolve_device(device, surrogate if isinstance(surrogate, nn.Module) else None)
    on_cuda = dev.type == "cuda"
    input_size = height if input_size is None else int(input_size)
    batch_size = (512 if on_cuda else REFERENCE_BATCH_SIZE) if batch_size is None else batch_size
    base_lr = lr * batch_size / REFERENCE_BATCH_SIZE if scale_lr else lr
    augment = input_size >= 32 if augment is None else augment

    model = _make_surrogate(surrogate, num_classes, input_size, in_channels, seed)
    if input_size != height:
        model = nn.Sequential(Resize(input_size), model)
    model.to(dev)
    if on_cuda:
        model.to(memory_format=torch.channels_last)
    x_all = query_images_uint8.to(dev, non_blocking=True)
    t_all = _prepare_targets(target_outputs, n, num_classes, label_only, dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=momentum,
                                weight_decay=weight_decay, fused=True if on_cuda else None)
    generator = torch.Generator(device=dev).manual_seed(seed)
    train_model = _maybe_compile(model, compile_model)
    cudnn = (torch.backends.cudnn.flags(enabled=True, benchmark=True) if on_cuda
             else contextlib.nullcontext())

    model.train()
    t_train = time.perf_counter()
    with cudnn:
        final_loss = _train_epochs(
            train_model, optimizer, x_all, t_all, epochs=epochs, batch_size=batch_size,
            base_lr=base_lr, schedule=schedule, pad=max(1, height // 8) if augment else 0,
            hflip=augment and hflip, amp_dtype=torch.bfloat16 if (amp and on_cuda) else None,
            channels_last=on_cuda, generator=generator, progress=progress,
        )
    train_time = time.perf_counter() - t_train
    model.eval()
    info = {
        "train_time_s": train_time,
        "total_time_s": time.perf_counter() - t_start,
        "epochs": epochs,
        "queries": int(n),
        "steps": epochs * math.ceil(n / batch_size),
        "batch_size": batch_size,
        "lr": base_lr,
        "final_train_loss": final_loss,
        "samples_per_s": epochs * n / train_time,
        "label_only": label_only,
        "device": str(dev),
        "amp": bool(amp and on_cuda),
    }
    logger.info("stole a surrogate from %d queries in %.2f s (%d epochs, loss %.4f)",
                n, train_time, epochs, final_loss)
    return model, info


def evaluate_surrogate(
    surrogate: nn.Module,
    target: nn.Module,
    test_images_uint8: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 512,
) -> dict[str, float]:
    """Attack accuracy (surrogate vs. labels), agreement (surrogate vs. target top-1) and the
    target's accuracy on a uint8 test set (Jagielski et al.'s metrics, as in SecurityNet §3.1)."""
    _check_uint8(test_images_uint8, "test_images_uint8")
    labels = torch.as_tensor(test_labels)
    n = test_images_uint8.shape[0]
    if n == 0 or labels.shape[0] != n:
        raise ValueError("test images and labels must be non-empty and of equal length")
    device = _resolve_device(device, surrogate)
    surrogate.to(device).eval()
    target.to(device).eval()
    counts = torch.zeros(3, dtype=torch.long, device=device)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = test_images_uint8[start : start + batch_size].to(device, non_blocking=True)
            x = x.float().div_(255)
            y = labels[start : start + batch_size].to(device, torch.long, non_blocking=True)
            s_pred = surrogate(x).argmax(1)
            t_pred = target(x).argmax(1)
            counts += torch.stack([(s_pred == y).sum(), (s_pred == t_pred).sum(), (t_pred == y).sum()])
    attack_acc, agreement, target_acc = (counts.double() / n).tolist()
    return {"attack_accuracy": attack_acc, "agreement": agreement, "target_accuracy": target_acc}


def training_flops(
    surrogate: nn.Module, input_shape: tuple[int, int, int], n_samples: int, epochs: int
) -> float:
    """FLOPs of training ``surrogate`` on ``n_samples`` images of ``input_shape`` (C, H, W) for
    ``epochs``: one forward+backward counted with FlopCounterMode on a copy placed on the meta
    device (no compute), scaled. Counts matmuls and convolutions only, so divide by the measured
    training time for a conservative achieved-TFLOP/s."""
    probe = copy.deepcopy(surrogate).to("meta").train()
    x = torch.empty((2, *input_shape), device="meta")
    with FlopCounterMode(display=False) as counter:
        probe(x).float().sum().backward()
    return counter.get_total_flops() / 2 * n_samples * epochs
