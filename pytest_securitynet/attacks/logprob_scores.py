"""Membership scores from log-probabilities, free of float32 softmax saturation.

A float32 softmax rounds every true-class probability above 1 - 6e-8 to exactly 1.0, so members
and confident non-members tie at the best value of confidence, loss and entropy (issue seen on
CIFAR-10 ResNets: 12% of each group). A log-softmax keeps that information: the log-probabilities
of the *other* classes stay accurate (for example -25.3), and everything the scores need can be
computed from them in float64 (Carlini et al., S&P 2022, use the logit-scaled confidence for
this reason).

Notation: lp_j = log p_j and lc_j = log(1 - p_j) = log(sum of the other p). For a class that is not
the row's arg-max, p_j <= 0.5 and lc_j = log1p(-exp(lp_j)) is exact; for the arg-max class m,
lc_m = logsumexp over the other classes, and lp_m is recomputed as log1p(-exp(lc_m)), so even a
probability within 1e-30 of 1 keeps its distance to 1.
"""

from __future__ import annotations

import torch

__all__ = [
    "check_log_probs",
    "log_prob_terms",
    "logit_confidence",
    "loss_from_log_probs",
    "entropy_from_log_probs",
    "modified_entropy_from_log_probs",
    "true_class_log_terms",
]


def check_log_probs(log_probs: torch.Tensor, what: str) -> None:
    """Raise ValueError unless `log_probs` is a finite float tensor of log-probabilities (<= 0, up to rounding)."""
    if not log_probs.is_floating_point() or not bool(torch.isfinite(log_probs).all()):
        raise ValueError(f"{what} log-probabilities must be finite floating-point values (a log-softmax of logits)")
    if log_probs.numel() and float(log_probs.max()) > 1e-3:
        raise ValueError(f"{what} log-probabilities must be <= 0; pass log_softmax(logits), not logits")


def log_prob_terms(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lp, lc): log p_j and log(1 - p_j) of every class, float64, shape as the input [..., C]."""
    lp = log_probs.to(torch.float64)
    top = lp.argmax(dim=-1, keepdim=True)
    others_of_top = torch.logsumexp(lp.scatter(-1, top, -torch.inf), dim=-1, keepdim=True)
    # For non-arg-max classes p <= 0.5, so log1p(-p) is exact; the arg-max's complement is the
    # sum of the others, and its own log-probability is recomputed from that complement.
    lc = torch.log1p(-torch.exp(lp)).scatter(-1, top, others_of_top)
    lp = lp.scatter(-1, top, torch.log1p(-torch.exp(others_of_top)))
    return lp, lc


def true_class_log_terms(log_probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_y, log(1 - p_y)) per sample, float64; `log_probs` is [..., N, C], `labels` is [N]."""
    lp, lc = log_prob_terms(log_probs)
    index = labels.to(lp.device).view(*([1] * (lp.dim() - 2)), -1, 1).expand(*lp.shape[:-1], 1)
    return lp.gather(-1, index).squeeze(-1), lc.gather(-1, index).squeeze(-1)


def logit_confidence(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logit-scaled confidence log p_y - log(1 - p_y); higher for members (Carlini et al. 2022, LiRA's statistic)."""
    lp_y, lc_y = true_class_log_terms(log_probs, labels)
    return lp_y - lc_y


def loss_from_log_probs(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy loss -log p_y, exact even where p_y rounds to 1 in float32 (Yeom et al. 2018)."""
    return -true_class_log_terms(log_probs, labels)[0]


def entropy_from_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy -sum p_j log p_j of each row; lower for members (Salem et al. 2019)."""
    lp, _ = log_prob_terms(log_probs)
    return -(torch.exp(lp) * lp).sum(dim=-1)


def modified_entropy_from_log_probs(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Modified entropy -(1-p_y) log p_y - sum_{j!=y} p_j log(1-p_j); lower for members (Song & Mittal 2021)."""
    lp, lc = log_prob_terms(log_probs)
    index = labels.to(lp.device).view(-1, 1)
    lp_y, lc_y = lp.gather(1, index).squeeze(1), lc.gather(1, index).squeeze(1)
    others = -(torch.exp(lp) * lc)
    others = others.sum(dim=1) - others.gather(1, index).squeeze(1)
    return -torch.exp(lc_y) * lp_y + others
