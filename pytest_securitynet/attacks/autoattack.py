"""AutoAttack (Croce & Hein, ICML 2020), the robust-accuracy protocol of RobustBench, run with the
authors' own attacks from the `pyautoattack` package.

The standard ensemble runs APGD-CE, APGD-T (9 target classes), FAB-T (9 target classes) and Square
(5,000 queries) one after the other, each on the points that every earlier attack left correctly
classified; a point counts as robust only if all four fail. ``run_autoattack`` drives that cascade
itself with the package's attack objects, configured exactly as ``AutoAttack(version="standard")``
configures them, so that it can record what the package only logs: the robust accuracy after each
attack, the time each took, and RobustBench's reasons to distrust an evaluation:

- zero or non-finite input gradients at the clean points (gradient masking: white-box attacks
  then walk blind), and the package's own zero-gradient warnings during APGD;
- Square, a black-box attack, lowering robust accuracy after the white-box attacks (the package's
  ``check_square_sr``: by more than 0.2 points);
- a non-deterministic forward pass (two passes over the same points disagree);
- the package's other checks (logits that look like probabilities, a forward pass that takes
  gradients: a "dynamic" defense).

Any of them marks the result ``unreliable`` with the reasons. ``tests/test_autoattack.py`` checks
that the cascade gives the same robust accuracy as ``AutoAttack.run_standard_evaluation`` on the
same points.

Images are floats in [0, 1] (catalog models normalise inside); eps is on that scale.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .common import ResultRecord, attack_mode, resolve_device

Norm = Literal["Linf", "L2"]

STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
"""The standard version's attacks, in the order they run."""
WHITE_BOX = ("apgd-ce", "apgd-t", "fab-t")
SQUARE_MARGIN = 0.002
"""Square may lower robust accuracy by this much after the white-box attacks (pyautoattack's check_square_sr)."""
DETERMINISM_TOLERANCE = 1e-4
"""Largest L2 distance between two passes' L2-normalised logits of one point (pyautoattack's check_randomized)."""

ROBUSTBENCH_RADII: dict[str, tuple[tuple[Norm, float], ...]] = {
    "cifar10": (("Linf", 8 / 255), ("L2", 0.5)),
    "cifar-10": (("Linf", 8 / 255), ("L2", 0.5)),
    "cifar100": (("Linf", 8 / 255),),
    "cifar-100": (("Linf", 8 / 255),),
    "imagenet": (("Linf", 4 / 255),),
    "imagenet1k": (("Linf", 4 / 255),),
}
"""RobustBench's leaderboards per dataset (threat model and radius); other datasets have none."""


def robustbench_radius(dataset: str, norm: Norm) -> float | None:
    """RobustBench's radius for ``norm`` on ``dataset`` (a catalog dataset id), None where it has no leaderboard."""
    for leaderboard_norm, eps in ROBUSTBENCH_RADII.get(dataset.lower(), ()):
        if leaderboard_norm == norm:
            return eps
    return None


@dataclass
class AutoAttackResult(ResultRecord):
    """Clean and robust accuracy on the same points, per attack and worst case.

    ``robust_accuracy_after``: robust accuracy once each attack (and all before it) has run, in
    run order, so its last value is the worst case ``robust_accuracy``. ``flipped``: points each
    attack turned from correct to wrong. ``attack_time_s``: seconds per attack."""

    norm: str
    eps: float
    attacks: list[str]
    n_points: int
    seed: int
    batch_size: int
    clean_accuracy: float
    robust_accuracy: float
    robust_accuracy_after: dict[str, float]
    flipped: dict[str, int]
    attack_time_s: dict[str, float]
    max_perturbation: float
    unreliable: bool
    unreliable_reasons: list[str]
    package_warnings: list[str]
    package_version: str
    clean: torch.Tensor = field(repr=False)
    """Per point: correctly classified before any attack."""
    robust: torch.Tensor = field(repr=False)
    """Per point: still correctly classified after every attack."""


class _Warnings(logging.Handler):
    """Collects what pyautoattack logs at WARNING (its checks report through its logger)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


@contextlib.contextmanager
def _captured_warnings(logger: logging.Logger) -> Iterator[_Warnings]:
    handler = _Warnings()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def standard_adversary(model: nn.Module, norm: Norm, eps: float, num_classes: int, seed: int, device: torch.device):
    """``pyautoattack.AutoAttack`` in its standard version, with at most ``num_classes - 1`` target classes."""
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm=norm, eps=eps, version="standard", seed=seed, device=device)
    adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, num_classes - 1)
    adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, num_classes - 1)
    return adversary


def _attacks_for(num_classes: int) -> list[str]:
    """The standard attacks; the targeted DLR loss of APGD-T needs at least 4 classes."""
    return [a for a in STANDARD_ATTACKS if not (a == "apgd-t" and num_classes < 4)]


def _perturb(adversary, attack: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One attack of the standard version on one batch, set up as AutoAttack.run_standard_evaluation does."""
    if attack == "apgd-ce":
        adversary.apgd.loss = "ce"
        adversary.apgd.seed = adversary.get_seed()
        return adversary.apgd.perturb(x, y)
    if attack == "apgd-t":
        adversary.apgd_targeted.seed = adversary.get_seed()
        return adversary.apgd_targeted.perturb(x, y)
    if attack == "fab-t":
        adversary.fab.targeted = True
        adversary.fab.n_restarts = 1
        adversary.fab.seed = adversary.get_seed()
        return adversary.fab.perturb(x, y)
    if attack == "square":
        adversary.square.seed = adversary.get_seed()
        return adversary.square.perturb(x, y)
    raise ValueError(f"unknown AutoAttack attack {attack!r}; known: {', '.join(STANDARD_ATTACKS)}")


def _distance(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


def _gradient_reasons(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      batch_size: int) -> tuple[list[str], torch.Tensor]:
    """Zero or non-finite cross-entropy input gradients at the clean points, and the clean logits
    of the same pass (so the clean points are run through the model once)."""
    zero = non_finite = torch.zeros((), dtype=torch.long, device=x.device)
    logits = []
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        xb = xb.clone().requires_grad_(True)
        with torch.enable_grad():
            out = model(xb)
            (grad,) = torch.autograd.grad(F.cross_entropy(out, yb, reduction="sum"), xb)
        logits.append(out.detach())
        flat = grad.flatten(1)
        non_finite = non_finite + (~torch.isfinite(flat)).any(1).sum()
        zero = zero + (flat.abs().sum(1) == 0).sum()
    reasons = []
    if int(non_finite):
        reasons.append(f"non-finite input gradients at {int(non_finite)} of {len(x)} clean points")
    if int(zero):
        reasons.append(f"zero input gradients at {int(zero)} of {len(x)} clean points")
    return reasons, torch.cat(logits)


def _determinism_reason(model: nn.Module, x: torch.Tensor) -> str | None:
    """Two forward passes over the same points must agree (pyautoattack's check_randomized, 2 passes)."""
    with torch.no_grad():
        first, second = model(x), model(x)
    if not (torch.isfinite(first).all() and torch.isfinite(second).all()):
        return "non-finite logits on clean points"
    unit = lambda z: z / (z.norm(dim=1, keepdim=True) + 1e-10)  # noqa: E731
    gap = float((unit(first) - unit(second)).norm(dim=1).max())
    changed = int((first.argmax(1) != second.argmax(1)).sum())
    if changed or gap > DETERMINISM_TOLERANCE:
        return (f"non-deterministic forward pass: two passes over the same {len(x)} points differ "
                f"(normalised logits by up to {gap:.2g}, {changed} predictions)")
    return None


def _square_reason(after: dict[str, float]) -> str | None:
    white = [after[a] for a in WHITE_BOX if a in after]
    if "square" in after and white and after["square"] < min(white) - SQUARE_MARGIN:
        return (f"Square (black-box) lowered robust accuracy by {min(white) - after['square']:.4f} "
                f"after the white-box attacks")
    return None


def run_autoattack(
    model: nn.Module,
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    *,
    norm: Norm = "Linf",
    eps: float = 8 / 255,
    num_classes: int | None = None,
    seed: int = 0,
    batch_size: int = 500,
    device: torch.device | str | None = None,
    progress=None,
) -> AutoAttackResult:
    """AutoAttack's standard ensemble on a uint8 image set: clean and robust accuracy on the same points.

    ``progress(text)`` (optional) is called as each attack starts. The global random state is
    restored afterwards (the package's attacks reseed it).
    """
    import pyautoattack
    from pyautoattack import checks

    if norm not in ("Linf", "L2"):
        raise ValueError(f"norm must be 'Linf' or 'L2'; got {norm!r}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0; got {eps!r}")
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
        raise ValueError(f"images_uint8 must be uint8 [N, C, H, W]; got {images_uint8.dtype} {tuple(images_uint8.shape)}")
    labels = torch.as_tensor(labels)
    if len(labels) != len(images_uint8) or len(labels) == 0:
        raise ValueError("images and labels must be non-empty and of equal length")
    device = resolve_device(device, model)
    model.to(device)
    x_all = images_uint8.to(device).float().div_(255)
    y_all = labels.to(device, torch.long)
    n = len(x_all)
    devices = [device.index or 0] if device.type == "cuda" else []
    with attack_mode(model), torch.random.fork_rng(devices=devices):
        reasons, logits = _gradient_reasons(model, x_all, y_all, batch_size)
        classes = num_classes or logits.shape[1]
        robust = logits.argmax(1) == y_all
        clean = robust.clone()
        clean_accuracy = int(robust.sum()) / n
        adversary = standard_adversary(model, norm, eps, classes, seed, device)
        attacks = _attacks_for(classes)
        nondeterministic = _determinism_reason(model, x_all[:batch_size])
        if nondeterministic:
            reasons.append(nondeterministic)
        x_adv = x_all.clone()
        after: dict[str, float] = {}
        flipped: dict[str, int] = {}
        times: dict[str, float] = {}
        with _captured_warnings(adversary.logger) as captured:
            checks.check_range_output(model, x_all[:batch_size], logger=adversary.logger)
            checks.check_dynamic(model, x_all[:batch_size], False, logger=adversary.logger)
            for attack in attacks:
                start = time.perf_counter()
                if progress is not None:
                    progress(f"{attack} at {norm} eps {eps:.4g} on {int(robust.sum())} of {n} points")
                before = int(robust.sum())
                index = robust.nonzero().flatten()
                for batch in index.split(batch_size):
                    adv = _perturb(adversary, attack, x_all[batch], y_all[batch]).detach()
                    inside = _distance(adv - x_all[batch], norm) <= eps + 1e-5
                    with torch.no_grad():
                        fooled = (model(adv).argmax(1) != y_all[batch]) & inside
                    robust[batch[fooled]] = False
                    x_adv[batch[fooled]] = adv[fooled]
                flipped[attack] = before - int(robust.sum())
                after[attack] = int(robust.sum()) / n
                times[attack] = time.perf_counter() - start
        square = _square_reason(after)
        if square:
            reasons.append(square)
        package_warnings = list(captured.messages)
        reasons += [f"pyautoattack: {m}" for m in package_warnings]
    max_perturbation = float(_distance(x_adv - x_all, norm).max())
    return AutoAttackResult(
        norm=norm, eps=eps, attacks=attacks, n_points=n, seed=seed, batch_size=batch_size,
        clean_accuracy=clean_accuracy, robust_accuracy=int(robust.sum()) / n, robust_accuracy_after=after,
        flipped=flipped, attack_time_s=times, max_perturbation=max_perturbation, unreliable=bool(reasons),
        unreliable_reasons=reasons, package_warnings=package_warnings,
        package_version=getattr(pyautoattack, "__version__", "unknown"), clean=clean.cpu(), robust=robust.cpu(),
    )


def reference_robust_accuracy(model: nn.Module, images_uint8: torch.Tensor, labels: torch.Tensor, *,
                              norm: Norm, eps: float, seed: int = 0, batch_size: int = 500,
                              device: torch.device | str | None = None) -> float:
    """Robust accuracy from ``pyautoattack.AutoAttack.run_standard_evaluation`` itself (the reference)."""
    device = resolve_device(device, model)
    model.to(device)
    x = images_uint8.to(device).float().div_(255)
    y = torch.as_tensor(labels).to(device, torch.long)
    devices = [device.index or 0] if device.type == "cuda" else []
    with attack_mode(model), torch.random.fork_rng(devices=devices):
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        adversary = standard_adversary(model, norm, eps, classes, seed, device)
        adversary.attacks_to_run = _attacks_for(classes)
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        with torch.no_grad():
            correct = torch.cat([model(b) for b in x_adv.split(batch_size)]).argmax(1) == y
            return int(correct.sum()) / len(y)


__all__: Sequence[str] = ("AutoAttackResult", "ROBUSTBENCH_RADII", "STANDARD_ATTACKS", "reference_robust_accuracy",
                          "robustbench_radius", "run_autoattack", "standard_adversary")
