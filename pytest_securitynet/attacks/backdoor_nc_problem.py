"""Neural Cleanse's trigger optimisation for L labels at once, with fixed shapes and no host waits.

The L per-label problems share stacked parameters (mask [L, 1, H, W], pattern [L, C, H, W] in tanh
space) and one forward/backward pass over [L * B, C, H, W] stamped images per step (chunked by
labels to bound memory). Each label's loss only reaches its own parameters, Adam is element-wise
and the cost schedule is per label, so every label follows exactly the path it would follow alone.

A step has the same shapes every time (a label that stopped early stays in the batch with its loss
multiplied by 0, so its parameters no longer matter and nothing reads them), reads its batch index
from a device buffer and accumulates attack successes and mask norms on the device. That lets the
step be replayed from a CUDA graph and leaves one host read per epoch: whether any label still runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .backdoor_nc_schedule import CostSchedule, NeuralCleanseSchedule
from .common import GraphedStep, autocast, memory_format, seeded_generator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FastPath:
    """How the optimisation runs: bf16 autocast dtype (None: fp32), channels_last, CUDA graphs."""

    amp: torch.dtype | None = None
    channels_last: bool = False
    cuda_graph: bool = False


@dataclass
class Reversed:
    """Outcome of the optimisation, per label (CPU)."""

    masks: torch.Tensor
    patterns: torch.Tensor
    success: list[float]
    epochs_run: list[int]
    images_forwarded: int
    graphed: bool


def to_unit(raw: torch.Tensor) -> torch.Tensor:
    """tanh parametrisation of the reference code, unconstrained -> [0, 1].

    The authors divide by (2 - eps) to stay strictly inside (0, 1); in float32 that eps is below
    the rounding step at 2 and can give -3e-8, so the equivalent (tanh + 1) / 2 is used instead.
    """
    return (torch.tanh(raw) + 1) / 2


def _adam(params: tuple[torch.Tensor, ...], settings: NeuralCleanseSchedule, device: torch.device) -> torch.optim.Adam:
    """Adam of the reference code. Fused keeps the step count on the device (no host read per step);
    on CUDA it is also capturable, i.e. replayable from a CUDA graph."""
    return torch.optim.Adam(params, lr=settings.lr, betas=settings.betas, fused=True,
                            capturable=device.type == "cuda")


class TriggerProblem:
    """Static tensors of the joint optimisation and its training step."""

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: list[int],
        init: tuple[torch.Tensor, torch.Tensor],
        *,
        settings: NeuralCleanseSchedule,
        max_images_per_forward: int,
        batch_size: int,
        fast: FastPath,
    ) -> None:
        device = images.device
        self.model, self.images, self.fast = model, images, fast
        self.params = tuple(p.to(device).clone().requires_grad_(True) for p in init)
        self.optimizer = _adam(self.params, settings, device)
        self.targets = torch.tensor(labels, device=device)
        self.n_labels = len(labels)
        self.rows_per_chunk = max(1, max_images_per_forward // batch_size)
        self.cost = torch.zeros(self.n_labels, device=device)  # float32 copy of the schedule's lambda
        self.active = torch.ones(self.n_labels, device=device)  # 1.0 while the label runs
        self.hits = torch.zeros(self.n_labels, device=device)
        self.reg_sum = torch.zeros(self.n_labels, device=device)
        self._steps: dict[int, tuple[torch.Tensor, GraphedStep]] = {}

    @property
    def graphed(self) -> bool:
        return any(step.captured for _, step in self._steps.values())

    def start_epoch(self, schedule: CostSchedule) -> None:
        """Copy the schedule's lambda and running flags into the step's buffers; reset the sums."""
        self.cost.copy_(schedule.cost)
        self.active.copy_(schedule.active)
        self.hits.zero_()
        self.reg_sum.zero_()

    def step(self, batch_index: torch.Tensor) -> None:
        """One Adam step of every label on the images ``batch_index`` (a device tensor)."""
        size = batch_index.shape[0]
        if size not in self._steps:
            buffer = torch.empty(size, dtype=torch.long, device=self.images.device)
            self._steps[size] = (buffer, GraphedStep(partial(self._step, buffer), enabled=self.fast.cuda_graph))
        buffer, run = self._steps[size]
        buffer.copy_(batch_index)
        run()

    def _step(self, batch_index: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        clean = self.images[batch_index].float().div_(255)
        for first in range(0, self.n_labels, self.rows_per_chunk):
            self._chunk(clean, first, min(first + self.rows_per_chunk, self.n_labels))
        self.optimizer.step()

    def _chunk(self, clean: torch.Tensor, first: int, last: int) -> None:
        """Forward/backward of labels [first, last) on the clean batch; adds their successes and L1."""
        mask = to_unit(self.params[0][first:last])
        pattern = to_unit(self.params[1][first:last])
        stamped = (1 - mask).unsqueeze(1) * clean.unsqueeze(0) + (mask * pattern).unsqueeze(1)
        n_rows, batch = stamped.shape[:2]
        stamped = stamped.flatten(0, 1).contiguous(memory_format=memory_format(self.fast.channels_last))
        with autocast(clean.device, self.fast.amp):
            logits = self.model(stamped)
        logits = logits.float().view(n_rows, batch, -1)
        wanted = self.targets[first:last].unsqueeze(1).expand(n_rows, batch)
        ce = nn.functional.cross_entropy(logits.flatten(0, 1), wanted.flatten(), reduction="none")
        reg = mask.abs().flatten(1).sum(1)
        loss = (ce.view(n_rows, batch).mean(1) + self.cost[first:last] * reg) * self.active[first:last]
        loss.sum().backward()
        with torch.no_grad():
            self.hits[first:last] += (logits.argmax(-1) == wanted).sum(1)
            self.reg_sum[first:last] += reg


def reverse_engineer(
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
    fast: FastPath,
) -> Reversed:
    """Optimise triggers for ``labels`` jointly on uint8 ``images`` (on the device).

    Returns the best masks and patterns, the attack success of the epoch that produced each best
    mask, and the number of epochs each label ran. The epochs' data orders are drawn up front from
    one seeded CPU generator (the same orders whatever the device or mode).
    """
    device = images.device
    n = len(images)
    problem = TriggerProblem(model, images, labels, init, settings=settings, batch_size=batch_size,
                             max_images_per_forward=max_images_per_forward, fast=fast)
    schedule = CostSchedule(len(labels), settings, device)
    best = [to_unit(p.detach()).clone() for p in problem.params]
    best_success = torch.zeros(len(labels), device=device)
    epochs_run = torch.zeros(len(labels), dtype=torch.long, device=device)
    generator = seeded_generator(seed)
    orders = torch.stack([torch.randperm(n, generator=generator) for _ in range(epochs)]).to(device)
    epochs_done = 0
    for epoch in range(epochs):
        running = schedule.active.clone()
        problem.start_epoch(schedule)
        batches = orders[epoch].split(batch_size)
        for batch in batches:
            problem.step(batch)
        # Like the reference: success is averaged over every sample of the epoch, the L1 over its steps.
        success, reg = problem.hits / n, problem.reg_sum / len(batches)
        improved = schedule.update(success, reg)
        epochs_run += running
        _store_best(best, problem.params, improved)
        best_success = torch.where(improved, success, best_success)
        epochs_done += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("epoch %d: running %d, success %s, mask L1 %s, cost %s", epoch,
                         int(running.sum()), success.tolist(), reg.tolist(), schedule.cost.tolist())
        if not bool(schedule.active.any()):  # the one host read per epoch
            break
    # As in the reference: a label that never found a working trigger keeps its last one.
    _store_best(best, problem.params, torch.isinf(schedule.reg_best))
    return Reversed(
        masks=best[0].cpu(), patterns=best[1].cpu(), success=best_success.tolist(),
        epochs_run=epochs_run.tolist(), images_forwarded=epochs_done * n * len(labels),
        graphed=problem.graphed,
    )


def _store_best(best: list[torch.Tensor], params: tuple[torch.Tensor, ...], rows: torch.Tensor) -> None:
    """Keep the current trigger of the labels in the boolean ``rows`` as their best."""
    keep = rows.view(-1, 1, 1, 1)
    for i, param in enumerate(params):
        best[i] = torch.where(keep, to_unit(param.detach()), best[i])
