"""Neural Cleanse (Wang et al., IEEE S&P 2019), with all labels reverse-engineered in one batched problem.

For every label l Neural Cleanse searches the smallest trigger (mask m_l, pattern p_l) that sends
clean images to l: minimise CE(f((1 - m_l) x + m_l p_l), l) + lambda_l |m_l|_1. A backdoor target
needs a much smaller mask than the other labels, which the MAD outlier test exposes (anomaly index
> 2 on the small side). SecurityNet (§4.3) runs it for 50 epochs with the authors' threshold.

``neural_cleanse`` optimises all labels in one problem (``backdoor_nc_problem``); on CUDA it runs in
bf16 autocast and channels_last, replays its step from a CUDA graph and never waits for the host
inside an epoch. ``neural_cleanse_sequential`` is the plain fp32 one-label-at-a-time reference with
the same data order, initialisation and schedule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.utils import save_image

from .backdoor_nc_problem import FastPath, reverse_engineer
from .backdoor_nc_schedule import NeuralCleanseSchedule
from .common import (
    DeviceLike,
    PhaseTimer,
    ResultRecord,
    attack_mode,
    autocast_dtype,
    cudnn_autotune,
    pass_flops,
    resolve_device,
    sample_index,
    seeded_generator,
    tflop_per_s,
    use_fast_path,
)

__all__ = [
    "ANOMALY_THRESHOLD",
    "NeuralCleanseResult",
    "NeuralCleanseSchedule",
    "mad_anomaly_index",
    "neural_cleanse",
    "neural_cleanse_sequential",
    "save_trigger_png",
]

logger = logging.getLogger(__name__)

# MAD consistency constant for normally distributed norms and the outlier threshold of the
# authors' mad_outlier_detection.py (the "default threshold" SecurityNet uses).
MAD_CONSISTENCY = 1.4826
ANOMALY_THRESHOLD = 2.0
# Keeps initial values strictly inside (0, 1) before atanh (the authors use Keras' epsilon there).
_TANH_EPS = 1e-6
# Images per forward pass when the caller does not say: labels x images of a step in one pass on
# CUDA for up to 512 labels at batch 32; the CPU keeps passes small.
_MAX_IMAGES_PER_FORWARD = {"cuda": 16384}
_MAX_IMAGES_PER_FORWARD_DEFAULT = 2048


@dataclass
class NeuralCleanseResult(ResultRecord):
    """Reverse-engineered triggers, the MAD outlier verdict and the settings that produced them.

    Per-label lists align with ``labels``. ``phases`` holds wall seconds of setup, attack (the
    trigger optimisation) and evaluation (the outlier test); ``flops`` counts the forward and
    input-gradient passes of the optimisation.
    """

    labels: list[int]
    mask_norms: list[float]
    anomaly_index: list[float]
    flagged: bool
    flagged_labels: list[int]
    suspect_label: int
    masks: torch.Tensor = field(repr=False)
    patterns: torch.Tensor = field(repr=False)
    attack_success: list[float]
    epochs_run: list[int]
    runtime_s: float
    mode: str
    epochs: int
    batch_size: int
    n_samples: int
    seed: int
    schedule: NeuralCleanseSchedule
    max_images_per_forward: int
    amp: str | None
    channels_last: bool
    cuda_graph: bool
    images_forwarded: int
    phases: dict[str, float]
    flops: float | None
    tflop_per_s: float | None

    @property
    def suspect_anomaly_index(self) -> float:
        """Anomaly index of the smallest-norm label (the quantity compared with the threshold 2)."""
        return self.anomaly_index[self.labels.index(self.suspect_label)]


def mad_anomaly_index(norms: np.ndarray) -> np.ndarray:
    """|norm - median| / (1.4826 * MAD) per label, as in the authors' mad_outlier_detection.py."""
    median = np.median(norms)
    deviation = np.abs(norms - median)
    mad = MAD_CONSISTENCY * np.median(deviation)
    if mad == 0:
        return np.where(deviation > 0, np.inf, 0.0)
    return deviation / mad


def _from_unit(value: torch.Tensor) -> torch.Tensor:
    return torch.atanh((2 * value - 1).clamp(-1 + _TANH_EPS, 1 - _TANH_EPS))


def _initial_parameters(
    num_classes: int, shape: tuple[int, int, int], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random mask and pattern for every class (reference init), in tanh space, on CPU.

    Drawn for all classes at once so a label gets the same start whichever subset or mode is run.
    """
    channels, height, width = shape
    generator = seeded_generator(seed)
    mask = torch.rand(num_classes, 1, height, width, generator=generator)
    pattern = torch.rand(num_classes, channels, height, width, generator=generator)
    return _from_unit(mask), _from_unit(pattern)


def _prepare(
    clean_images_uint8: torch.Tensor,
    num_classes: int,
    labels: list[int] | None,
    n_samples: int | None,
    device: torch.device,
    seed: int,
) -> tuple[torch.Tensor, list[int], tuple[torch.Tensor, torch.Tensor]]:
    labels = list(range(num_classes)) if labels is None else [int(label) for label in labels]
    if not labels or min(labels) < 0 or max(labels) >= num_classes:
        raise ValueError(f"labels must be a non-empty subset of range({num_classes})")
    subset = sample_index(len(clean_images_uint8), n_samples, seeded_generator(seed))
    images = clean_images_uint8[subset].to(device)  # kept uint8 on the device; converted per batch
    mask_init, pattern_init = _initial_parameters(num_classes, tuple(images.shape[1:]), seed + 1)
    return images, labels, (mask_init[labels], pattern_init[labels])


def _outlier_test(labels: list[int], norms: np.ndarray) -> dict:
    anomaly = mad_anomaly_index(norms)
    median = np.median(norms)
    outliers = [i for i in np.argsort(norms) if norms[i] < median and anomaly[i] > ANOMALY_THRESHOLD]
    return dict(
        mask_norms=norms.tolist(), anomaly_index=anomaly.tolist(), flagged=bool(outliers),
        flagged_labels=[labels[i] for i in outliers], suspect_label=labels[int(np.argmin(norms))],
    )


def _run(
    mode: str,
    model: nn.Module,
    clean_images_uint8: torch.Tensor,
    *,
    num_classes: int,
    epochs: int,
    batch_size: int,
    device: DeviceLike,
    seed: int,
    labels: list[int] | None,
    n_samples: int | None,
    max_images_per_forward: int | None,
    settings: NeuralCleanseSchedule | None,
    fast: FastPath,
) -> NeuralCleanseResult:
    """Shared body of both modes: prepare, optimise (all labels together or one by one), MAD test."""
    settings = settings or NeuralCleanseSchedule()
    device = resolve_device(device)
    timer = PhaseTimer(device)
    with timer.phase("setup"):
        images, labels, init = _prepare(clean_images_uint8, num_classes, labels, n_samples, device, seed)
        flops_per_image = pass_flops(model, tuple(images.shape[1:]))
    if max_images_per_forward is None:
        max_images_per_forward = _MAX_IMAGES_PER_FORWARD.get(device.type, _MAX_IMAGES_PER_FORWARD_DEFAULT)
    common = dict(epochs=epochs, batch_size=batch_size, seed=seed, settings=settings, fast=fast)
    with timer.phase("attack"), attack_mode(model, channels_last=fast.channels_last), cudnn_autotune(device):
        if mode == "batched":
            parts = [reverse_engineer(model, images, labels, init,
                                      max_images_per_forward=max_images_per_forward, **common)]
        else:
            parts = [reverse_engineer(model, images, [label], (init[0][i : i + 1], init[1][i : i + 1]),
                                      max_images_per_forward=batch_size, **common)
                     for i, label in enumerate(labels)]
    with timer.phase("evaluation"):
        masks = torch.cat([part.masks for part in parts])
        verdict = _outlier_test(labels, masks.flatten(1).sum(1).double().numpy())
    forwarded = sum(part.images_forwarded for part in parts)
    flops = None if flops_per_image is None else forwarded * sum(flops_per_image)
    return NeuralCleanseResult(
        labels=list(labels), **verdict, masks=masks, patterns=torch.cat([part.patterns for part in parts]),
        attack_success=[s for part in parts for s in part.success],
        epochs_run=[e for part in parts for e in part.epochs_run], runtime_s=timer.total, mode=mode,
        epochs=epochs, batch_size=batch_size, n_samples=len(images), seed=seed, schedule=settings,
        max_images_per_forward=max_images_per_forward if mode == "batched" else batch_size,
        amp=None if fast.amp is None else str(fast.amp).removeprefix("torch."),
        channels_last=fast.channels_last, cuda_graph=any(part.graphed for part in parts),
        images_forwarded=forwarded, phases=dict(timer.phases), flops=flops,
        tflop_per_s=tflop_per_s(flops, timer.phases["attack"]),
    )


def neural_cleanse(
    model: nn.Module,
    clean_images_uint8: torch.Tensor,
    *,
    num_classes: int,
    epochs: int = 50,
    batch_size: int = 32,
    device: DeviceLike,
    seed: int = 0,
    labels: list[int] | None = None,
    n_samples: int | None = 1000,
    max_images_per_forward: int | None = None,
    settings: NeuralCleanseSchedule | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    cuda_graph: bool | None = None,
) -> NeuralCleanseResult:
    """Neural Cleanse (Wang et al., S&P 2019) with all labels optimised together in one batched problem.

    Defaults: 50 epochs (SecurityNet) over a seeded subset of ``n_samples`` = 1000 clean images
    (NB_SAMPLE of the authors' script) in batches of 32 per label, Adam lr 0.1 betas (0.5, 0.9),
    lambda schedule of ``NeuralCleanseSchedule``; MAD anomaly index > 2 on the small side flags the
    model. Each forward pass holds at most ``max_images_per_forward`` images (labels are chunked;
    default 16384 on CUDA, 2048 elsewhere). ``amp`` (bf16 autocast), ``channels_last`` and
    ``cuda_graph`` default to on for CUDA and off elsewhere; ``amp=True`` also works on the CPU.
    """
    device = resolve_device(device)
    fast = FastPath(amp=autocast_dtype(amp, device), channels_last=use_fast_path(channels_last, device),
                    cuda_graph=use_fast_path(cuda_graph, device) and device.type == "cuda")
    result = _run("batched", model, clean_images_uint8, num_classes=num_classes, epochs=epochs,
                  batch_size=batch_size, device=device, seed=seed, labels=labels, n_samples=n_samples,
                  max_images_per_forward=max_images_per_forward, settings=settings, fast=fast)
    logger.info(
        "neural cleanse: suspect %d (anomaly %.2f), flagged=%s, %.1fs (%s)",
        result.suspect_label, result.suspect_anomaly_index, result.flagged, result.runtime_s,
        ", ".join(f"{k} {v:.2f}s" for k, v in result.phases.items()),
    )
    return result


def neural_cleanse_sequential(
    model: nn.Module,
    clean_images_uint8: torch.Tensor,
    *,
    num_classes: int,
    epochs: int = 50,
    batch_size: int = 32,
    device: DeviceLike,
    seed: int = 0,
    labels: list[int] | None = None,
    n_samples: int | None = 1000,
    settings: NeuralCleanseSchedule | None = None,
) -> NeuralCleanseResult:
    """Reference Neural Cleanse: one plain fp32 optimisation loop per label, as in the authors' code.

    Same data, initialisation, schedule and defaults as :func:`neural_cleanse`; used to check the
    batched version and to measure its speed-up.
    """
    return _run("sequential", model, clean_images_uint8, num_classes=num_classes, epochs=epochs,
                batch_size=batch_size, device=device, seed=seed, labels=labels, n_samples=n_samples,
                max_images_per_forward=batch_size, settings=settings, fast=FastPath())


def save_trigger_png(result: NeuralCleanseResult, label: int, path: str | Path) -> Path:
    """Write label's reversed trigger as one PNG: mask (left) and mask * pattern (right)."""
    row = result.labels.index(label)
    mask, pattern = result.masks[row], result.patterns[row]
    panels = torch.stack([mask.expand_as(pattern), mask * pattern])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(panels, path, nrow=2, padding=1, pad_value=0.5)
    return path
