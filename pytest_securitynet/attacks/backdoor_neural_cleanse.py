"""Neural Cleanse (Wang et al., IEEE S&P 2019), with all labels reverse-engineered in one batched problem.

For every label l Neural Cleanse searches the smallest trigger (mask m_l, pattern p_l) that sends
clean images to l: minimise CE(f((1 - m_l) x + m_l p_l), l) + lambda_l |m_l|_1. A backdoor target
needs a much smaller mask than the other labels, which the MAD outlier test exposes (anomaly index
> 2 on the small side). SecurityNet (§4.3) runs it for 50 epochs with the authors' threshold.

Here the L per-label problems share one set of stacked parameters (mask [L, 1, H, W], pattern
[L, C, H, W]) and one forward pass over [L * B, C, H, W] images per step (chunked by labels to bound
memory). The problems stay independent: each label's loss only reaches its own parameters, Adam is
element-wise and the cost schedule below is kept per label, so the batched run optimises exactly what
the one-label-at-a-time reference (``neural_cleanse_sequential``) does, with the same data order and
initialisation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.utils import save_image

from .common import DeviceLike, attack_mode, sample_index, seeded_generator, to_float

logger = logging.getLogger(__name__)

# MAD consistency constant for normally distributed norms and the outlier threshold of the
# authors' mad_outlier_detection.py (the "default threshold" SecurityNet uses).
MAD_CONSISTENCY = 1.4826
ANOMALY_THRESHOLD = 2.0
# Keeps initial values strictly inside (0, 1) before atanh (the authors use Keras' epsilon there).
_TANH_EPS = 1e-6


@dataclass(frozen=True)
class NeuralCleanseSchedule:
    """Optimisation constants of the authors' reference implementation (visualizer.py + GTSRB script)."""

    init_cost: float = 1e-3  # lambda once a working trigger exists (INIT_COST)
    lr: float = 0.1  # Adam learning rate (LR)
    betas: tuple[float, float] = (0.5, 0.9)  # Adam beta_1, beta_2 of the reference code
    attack_succ_threshold: float = 0.99  # epoch attack success that counts as "trigger works"
    patience: int = 5  # epochs of success (failure) before raising (lowering) lambda (PATIENCE)
    cost_multiplier_up: float = 1.5  # lambda *= 1.5 after `patience` successful epochs
    cost_multiplier_down: float = 1.5**1.5  # lambda /= 1.5 ** 1.5 after `patience` failed epochs
    early_stop_threshold: float = 1.0  # "no improvement" means best norm >= 1.0 * previous best
    early_stop_patience: int = 25  # 5 * PATIENCE epochs without improvement (authors' script)
    reset_cost_to_zero: bool = True  # authors' default: lambda = 0 until a working trigger is found


class _CostSchedule:
    """Per-label lambda schedule and early stop of Neural Cleanse, vectorised over labels (numpy).

    Mirrors the authors' visualizer: lambda starts at 0 (their default ``reset_cost_to_zero``) so the
    first epochs only look for any working trigger; after ``patience`` consecutive epochs with attack
    success >= threshold it is set to ``init_cost`` = 1e-3, then multiplied by 1.5 after ``patience``
    consecutive successful epochs or divided by 1.5 ** 1.5 after ``patience`` consecutive failed ones
    (the authors' code steps down harder than up). The best mask is the smallest-norm one seen at an
    epoch whose attack success reached the threshold. A label stops once lambda has moved both up and
    down and its best norm has not improved for ``early_stop_patience`` epochs.
    """

    def __init__(self, n_labels: int, settings: NeuralCleanseSchedule) -> None:
        self.settings = settings
        self.cost = np.full(n_labels, 0.0 if settings.reset_cost_to_zero else settings.init_cost)
        self.reg_best = np.full(n_labels, np.inf)
        self.active = np.ones(n_labels, dtype=bool)
        self._set_counter = np.zeros(n_labels, dtype=int)
        self._up_counter = np.zeros(n_labels, dtype=int)
        self._down_counter = np.zeros(n_labels, dtype=int)
        self._up_flag = np.zeros(n_labels, dtype=bool)
        self._down_flag = np.zeros(n_labels, dtype=bool)
        self._stop_counter = np.zeros(n_labels, dtype=int)
        self._stop_reg_best = np.full(n_labels, np.inf)

    def update(self, success: np.ndarray, reg: np.ndarray) -> np.ndarray:
        """End-of-epoch update from mean attack success and mean mask L1; returns labels whose best improved."""
        running = self.active.copy()
        reached = success >= self.settings.attack_succ_threshold
        improved = running & reached & (reg < self.reg_best)
        self.reg_best[improved] = reg[improved]
        self._check_early_stop(running)
        self._adjust_cost(running & self.active, reached)
        return improved

    def _check_early_stop(self, running: np.ndarray) -> None:
        found = running & np.isfinite(self.reg_best)
        stalled = self.reg_best >= self.settings.early_stop_threshold * self._stop_reg_best
        self._stop_counter[found] = np.where(stalled, self._stop_counter + 1, 0)[found]
        self._stop_reg_best[running] = np.minimum(self.reg_best, self._stop_reg_best)[running]
        stop = running & self._up_flag & self._down_flag
        stop &= self._stop_counter >= self.settings.early_stop_patience
        self.active &= ~stop

    def _adjust_cost(self, running: np.ndarray, reached: np.ndarray) -> None:
        s = self.settings
        at_zero = (self.cost == 0) & reached
        self._set_counter[running] = np.where(at_zero, self._set_counter + 1, 0)[running]
        start = running & (self._set_counter >= s.patience)
        self.cost[start] = s.init_cost
        for array in (self._up_counter, self._down_counter, self._up_flag, self._down_flag):
            array[start] = 0
        self._up_counter[running] = np.where(reached, self._up_counter + 1, 0)[running]
        self._down_counter[running] = np.where(reached, 0, self._down_counter + 1)[running]
        up = running & (self._up_counter >= s.patience)
        down = running & ~up & (self._down_counter >= s.patience)
        self._up_counter[up] = 0
        self._down_counter[down] = 0
        self.cost[up] *= s.cost_multiplier_up
        self.cost[down] /= s.cost_multiplier_down
        self._up_flag |= up
        self._down_flag |= down


@dataclass
class NeuralCleanseResult:
    """Reverse-engineered triggers and the MAD outlier verdict; per-label lists align with ``labels``."""

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


def _to_unit(raw: torch.Tensor) -> torch.Tensor:
    """tanh parametrisation of the reference code, unconstrained -> [0, 1].

    The authors divide by (2 - eps) to stay strictly inside (0, 1); in float32 that eps is below
    the rounding step at 2 and can give -3e-8, so the equivalent (tanh + 1) / 2 is used instead.
    """
    return (torch.tanh(raw) + 1) / 2


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


def _chunk_step(
    model: nn.Module,
    images: torch.Tensor,
    params: tuple[torch.Tensor, torch.Tensor],
    rows: torch.Tensor,
    targets: torch.Tensor,
    cost: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward/backward for the labels in ``rows`` on one batch; returns (#successes, mask L1) per row."""
    mask = _to_unit(params[0][rows])
    pattern = _to_unit(params[1][rows])
    stamped = (1 - mask).unsqueeze(1) * images.unsqueeze(0) + (mask * pattern).unsqueeze(1)
    n_rows, batch = stamped.shape[:2]
    logits = model(stamped.flatten(0, 1)).view(n_rows, batch, -1)
    wanted = targets[rows].unsqueeze(1).expand(n_rows, batch)
    ce = nn.functional.cross_entropy(logits.flatten(0, 1), wanted.flatten(), reduction="none")
    reg = mask.abs().flatten(1).sum(1)
    loss = (ce.view(n_rows, batch).mean(1) + cost[rows] * reg).sum()
    loss.backward()
    return (logits.argmax(-1) == wanted).sum(1).float().detach(), reg.detach()


def _reverse_engineer(
    model: nn.Module,
    images: torch.Tensor,
    labels: list[int],
    init: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    max_images_per_forward: int,
    settings: NeuralCleanseSchedule,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Optimise triggers for ``labels`` jointly on uint8 ``images`` (on the device).

    Returns the best masks and patterns (CPU), the attack success of the epoch that produced each
    best mask, and the number of epochs each label ran.
    """
    device = images.device
    params = tuple(p.to(device).clone().requires_grad_(True) for p in init)
    optimizer = torch.optim.Adam(params, lr=settings.lr, betas=settings.betas)
    targets = torch.tensor(labels, device=device)
    schedule = _CostSchedule(len(labels), settings)
    best = [_to_unit(p.detach()).clone() for p in params]
    best_success = np.zeros(len(labels))
    epochs_run = np.zeros(len(labels), dtype=int)
    generator = seeded_generator(seed)
    rows_per_chunk = max(1, max_images_per_forward // batch_size)
    for epoch in range(epochs):
        running = np.flatnonzero(schedule.active)
        if running.size == 0:
            break
        order = torch.randperm(len(images), generator=generator).to(device)
        success, reg = _run_epoch(
            model, images, order, params, optimizer, targets,
            torch.as_tensor(running, device=device),
            torch.as_tensor(schedule.cost, dtype=torch.float32, device=device),
            batch_size, rows_per_chunk,
        )
        epochs_run[running] += 1
        improved = np.flatnonzero(schedule.update(success, reg))
        _store_best(best, params, improved)
        best_success[improved] = success[improved]
        logger.debug(
            "epoch %d: labels running %d, success %s, mask L1 %s, cost %s",
            epoch, running.size, np.round(success, 3), np.round(reg, 2), schedule.cost,
        )
    never = np.flatnonzero(~np.isfinite(schedule.reg_best))
    _store_best(best, params, never)  # as in the reference: no working trigger -> keep the last one
    return best[0].cpu(), best[1].cpu(), best_success, epochs_run


def _store_best(best: list[torch.Tensor], params: tuple[torch.Tensor, ...], rows: np.ndarray) -> None:
    if rows.size:
        index = torch.as_tensor(rows, device=params[0].device)
        for kept, param in zip(best, params):
            kept[index] = _to_unit(param.detach()[index])


def _run_epoch(
    model: nn.Module,
    images: torch.Tensor,
    order: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    optimizer: torch.optim.Optimizer,
    targets: torch.Tensor,
    running: torch.Tensor,
    cost: torch.Tensor,
    batch_size: int,
    rows_per_chunk: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One pass over the clean subset; returns per-label mean attack success and mean mask L1."""
    n_labels = len(targets)
    successes = torch.zeros(n_labels, device=images.device)
    reg_sum = torch.zeros(n_labels, device=images.device)
    steps = 0
    for batch in order.split(batch_size):
        optimizer.zero_grad(set_to_none=True)
        clean = to_float(images[batch], images.device)
        for rows in running.split(rows_per_chunk):
            hits, reg = _chunk_step(model, clean, params, rows, targets, cost)
            successes.index_add_(0, rows, hits)
            reg_sum.index_add_(0, rows, reg)
        optimizer.step()
        steps += 1
    # Like the reference: success is averaged over every sample of the epoch, the L1 over its steps.
    return (successes / len(order)).cpu().numpy(), (reg_sum / steps).cpu().numpy()


def _build_result(
    labels: list[int],
    masks: torch.Tensor,
    patterns: torch.Tensor,
    success: np.ndarray,
    epochs_run: np.ndarray,
    runtime_s: float,
) -> NeuralCleanseResult:
    norms = masks.flatten(1).sum(1).double().numpy()
    anomaly = mad_anomaly_index(norms)
    median = np.median(norms)
    outliers = [i for i in np.argsort(norms) if norms[i] < median and anomaly[i] > ANOMALY_THRESHOLD]
    return NeuralCleanseResult(
        labels=list(labels),
        mask_norms=norms.tolist(),
        anomaly_index=anomaly.tolist(),
        flagged=bool(outliers),
        flagged_labels=[labels[i] for i in outliers],
        suspect_label=labels[int(np.argmin(norms))],
        masks=masks,
        patterns=patterns,
        attack_success=success.tolist(),
        epochs_run=epochs_run.tolist(),
        runtime_s=runtime_s,
    )


def _prepare(
    clean_images_uint8: torch.Tensor,
    num_classes: int,
    labels: list[int] | None,
    n_samples: int | None,
    device: DeviceLike,
    seed: int,
) -> tuple[torch.Tensor, list[int], tuple[torch.Tensor, torch.Tensor]]:
    labels = list(range(num_classes)) if labels is None else [int(label) for label in labels]
    if not labels or min(labels) < 0 or max(labels) >= num_classes:
        raise ValueError(f"labels must be a non-empty subset of range({num_classes})")
    subset = sample_index(len(clean_images_uint8), n_samples, seeded_generator(seed))
    images = clean_images_uint8[subset].to(device)  # kept uint8; converted batch by batch
    mask_init, pattern_init = _initial_parameters(num_classes, tuple(images.shape[1:]), seed + 1)
    return images, labels, (mask_init[labels], pattern_init[labels])


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
    max_images_per_forward: int = 2048,
    settings: NeuralCleanseSchedule | None = None,
) -> NeuralCleanseResult:
    """Neural Cleanse (Wang et al., S&P 2019) with all labels optimised together in one batched problem.

    Defaults: 50 epochs (SecurityNet) over a seeded subset of ``n_samples`` = 1000 clean images
    (NB_SAMPLE of the authors' script) in batches of 32, Adam lr 0.1 betas (0.5, 0.9), lambda schedule
    of ``NeuralCleanseSchedule``; MAD anomaly index > 2 on the small side flags the model. Each
    forward pass holds at most ``max_images_per_forward`` images (labels are chunked).
    """
    settings = settings or NeuralCleanseSchedule()
    start = time.perf_counter()
    images, labels, init = _prepare(clean_images_uint8, num_classes, labels, n_samples, device, seed)
    with attack_mode(model):
        masks, patterns, success, epochs_run = _reverse_engineer(
            model, images, labels, init, epochs=epochs, batch_size=batch_size, seed=seed,
            max_images_per_forward=max_images_per_forward, settings=settings,
        )
    result = _build_result(labels, masks, patterns, success, epochs_run, time.perf_counter() - start)
    logger.info(
        "neural cleanse: suspect %d (anomaly %.2f), flagged=%s, %.1fs",
        result.suspect_label, result.suspect_anomaly_index, result.flagged, result.runtime_s,
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
    """Reference Neural Cleanse: one optimisation loop per label, as in the authors' code.

    Same data, initialisation, schedule and defaults as :func:`neural_cleanse`; used to check the
    batched version and to measure its speed-up.
    """
    settings = settings or NeuralCleanseSchedule()
    start = time.perf_counter()
    images, labels, init = _prepare(clean_images_uint8, num_classes, labels, n_samples, device, seed)
    outputs = []
    with attack_mode(model):
        for i, label in enumerate(labels):
            outputs.append(_reverse_engineer(
                model, images, [label], (init[0][i : i + 1], init[1][i : i + 1]), epochs=epochs,
                batch_size=batch_size, seed=seed, max_images_per_forward=batch_size,
                settings=settings,
            ))
    parts = list(zip(*outputs))
    masks, patterns = torch.cat(parts[0]), torch.cat(parts[1])
    success, epochs_run = np.concatenate(parts[2]), np.concatenate(parts[3])
    return _build_result(labels, masks, patterns, success, epochs_run, time.perf_counter() - start)


def save_trigger_png(result: NeuralCleanseResult, label: int, path: str | Path) -> Path:
    """Write label's reversed trigger as one PNG: mask (left) and mask * pattern (right)."""
    row = result.labels.index(label)
    mask, pattern = result.masks[row], result.patterns[row]
    panels = torch.stack([mask.expand_as(pattern), mask * pattern])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(panels, path, nrow=2, padding=1, pad_value=0.5)
    return path
