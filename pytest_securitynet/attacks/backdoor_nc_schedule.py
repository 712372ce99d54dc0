"""Neural Cleanse's per-label cost (lambda) schedule and early stop, as device tensors.

Kept on the device so the optimisation loop never waits for the host: the end-of-epoch update is a
handful of element-wise tensor operations over the labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


class CostSchedule:
    """Per-label lambda schedule and early stop of Neural Cleanse, vectorised over labels.

    Mirrors the authors' visualizer: lambda starts at 0 (their default ``reset_cost_to_zero``) so the
    first epochs only look for any working trigger; after ``patience`` consecutive epochs with attack
    success >= threshold it is set to ``init_cost`` = 1e-3, then multiplied by 1.5 after ``patience``
    consecutive successful epochs or divided by 1.5 ** 1.5 after ``patience`` consecutive failed ones
    (the authors' code steps down harder than up). The best mask is the smallest-norm one seen at an
    epoch whose attack success reached the threshold. A label stops once lambda has moved both up and
    down and its best norm has not improved for ``early_stop_patience`` epochs. Lambda and norms are
    float64, counters int64, flags bool, all on ``device``.
    """

    def __init__(self, n_labels: int, settings: NeuralCleanseSchedule, device: torch.device | str = "cpu") -> None:
        self.settings = settings
        start = 0.0 if settings.reset_cost_to_zero else settings.init_cost
        self.cost = torch.full((n_labels,), start, dtype=torch.float64, device=device)
        self.reg_best = torch.full((n_labels,), torch.inf, dtype=torch.float64, device=device)
        self.active = torch.ones(n_labels, dtype=torch.bool, device=device)
        counter = torch.zeros(n_labels, dtype=torch.int64, device=device)
        flag = torch.zeros(n_labels, dtype=torch.bool, device=device)
        self._set_counter, self._up_counter, self._down_counter = counter.clone(), counter.clone(), counter.clone()
        self._up_flag, self._down_flag = flag.clone(), flag.clone()
        self._stop_counter = counter.clone()
        self._stop_reg_best = self.reg_best.clone()

    def update(self, success: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
        """End-of-epoch update from mean attack success and mean mask L1; returns labels whose best improved."""
        running = self.active.clone()
        reached = success >= self.settings.attack_succ_threshold
        reg = reg.to(torch.float64)
        improved = running & reached & (reg < self.reg_best)
        self.reg_best = torch.where(improved, reg, self.reg_best)
        self._check_early_stop(running)
        self._adjust_cost(running & self.active, reached)
        return improved

    def _check_early_stop(self, running: torch.Tensor) -> None:
        found = running & torch.isfinite(self.reg_best)
        stalled = self.reg_best >= self.settings.early_stop_threshold * self._stop_reg_best
        counted = torch.where(stalled, self._stop_counter + 1, 0)
        self._stop_counter = torch.where(found, counted, self._stop_counter)
        self._stop_reg_best = torch.where(running, torch.minimum(self.reg_best, self._stop_reg_best),
                                          self._stop_reg_best)
        stop = running & self._up_flag & self._down_flag
        stop &= self._stop_counter >= self.settings.early_stop_patience
        self.active = self.active & ~stop

    def _adjust_cost(self, running: torch.Tensor, reached: torch.Tensor) -> None:
        s = self.settings
        at_zero = (self.cost == 0) & reached
        self._set_counter = torch.where(running, torch.where(at_zero, self._set_counter + 1, 0), self._set_counter)
        start = running & (self._set_counter >= s.patience)
        self.cost = torch.where(start, s.init_cost, self.cost)
        self._up_counter = torch.where(start, 0, self._up_counter)
        self._down_counter = torch.where(start, 0, self._down_counter)
        self._up_flag = self._up_flag & ~start
        self._down_flag = self._down_flag & ~start
        self._up_counter = torch.where(running, torch.where(reached, self._up_counter + 1, 0), self._up_counter)
        self._down_counter = torch.where(running, torch.where(reached, 0, self._down_counter + 1),
                                         self._down_counter)
        up = running & (self._up_counter >= s.patience)
        down = running & ~up & (self._down_counter >= s.patience)
        self._up_counter = torch.where(up, 0, self._up_counter)
        self._down_counter = torch.where(down, 0, self._down_counter)
        self.cost = torch.where(up, self.cost * s.cost_multiplier_up, self.cost)
        self.cost = torch.where(down, self.cost / s.cost_multiplier_down, self.cost)
        self._up_flag = self._up_flag | up
        self._down_flag = self._down_flag | down
