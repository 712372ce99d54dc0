"""Quantile-regression membership inference (Bertran et al., NeurIPS 2023), without reference models.

The attacker fits, on public samples it knows are non-members, a regressor that predicts from a
sample (x, y) the distribution of the target's score s(x, y) over non-members like it, and calls
x a member when its score lies above the predicted (1 - alpha) quantile: a per-example threshold
in place of K reference models. Here the score is the logit-scaled confidence
phi = log p_y - log(1 - p_y) (from log-probabilities, no saturation), and the regressor predicts a
Gaussian (mu(x), sigma(x)) by its negative log-likelihood, so every quantile,
mu + sigma * Phi^-1(1 - alpha), comes from one fit; the membership score (s - mu) / sigma orders
samples by the quantile level they reach.

Bertran et al. train the whole regressor (a network on x) per target. To stay cheap across a zoo,
the features here come from one network per dataset (trained once on public data by the harness and
cached, `harness.reference.quantile_backbone`): its log-probabilities on x, the one-hot label and
its own phi; only a small head is fitted per target, on the target's scores, in seconds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .logprob_scores import logit_confidence

__all__ = [
    "QUANTILE_ALPHA",
    "QuantileRegressor",
    "fit_quantile_regressor",
    "quantile_features",
]

QUANTILE_ALPHA = 0.01
"""The false-positive rate the hard decision aims at: member iff s > the predicted 99% quantile."""

HEAD_HIDDEN = 32
HEAD_STEPS = 400
HEAD_LR = 1e-2
HEAD_WEIGHT_DECAY = 1e-3


def quantile_features(backbone_log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N, 2C + 1] float32: the backbone's log-probabilities (floored at -30), the one-hot label, its phi."""
    num_classes = backbone_log_probs.shape[-1]
    onehot = F.one_hot(labels.to(backbone_log_probs.device), num_classes).to(torch.float32)
    phi = logit_confidence(backbone_log_probs, labels.to(backbone_log_probs.device)).to(torch.float32)
    return torch.cat([backbone_log_probs.float().clamp_min(-30.0), onehot, phi.clamp(-60.0, 60.0)[:, None]], dim=1)


class QuantileRegressor(nn.Module):
    """Standardised features -> (mu, log sigma) of the target's score, in the score's own units."""

    def __init__(self, n_features: int, feature_mean: torch.Tensor, feature_std: torch.Tensor,
                 score_mean: float, score_std: float) -> None:
        super().__init__()
        self.register_buffer("feature_mean", feature_mean)
        self.register_buffer("feature_std", feature_std)
        self.score_mean, self.score_std = score_mean, score_std
        self.net = nn.Sequential(nn.Linear(n_features, HEAD_HIDDEN), nn.ReLU(), nn.Linear(HEAD_HIDDEN, 2))

    def standardised(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma) in standardised score units."""
        out = self.net((features - self.feature_mean) / self.feature_std)
        return out[:, 0], out[:, 1].clamp(-7.0, 7.0)

    def predict(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, sigma) of the score, float64 [N] each."""
        with torch.no_grad():
            mu, log_sigma = self.standardised(features.float())
        return (mu.double() * self.score_std + self.score_mean,
                log_sigma.double().exp() * self.score_std)

    def membership_scores(self, features: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s - mu) / sigma and the decision at `QUANTILE_ALPHA` (s above the predicted 1 - alpha quantile)."""
        mu, sigma = self.predict(features)
        z = (scores.double().to(mu.device) - mu) / sigma
        return z, z > math.sqrt(2.0) * torch.special.erfinv(torch.tensor(1 - 2 * QUANTILE_ALPHA)).item()


def fit_quantile_regressor(features: torch.Tensor, scores: torch.Tensor, *, seed: int = 0) -> QuantileRegressor:
    """Fit the Gaussian head on public non-members' features [N, D] and target scores [N] (full-batch Adam).

    Deterministic for a seed on the CPU; works under inference mode.
    """
    if features.shape[0] != scores.shape[0] or features.shape[0] < 2:
        raise ValueError(f"need at least 2 public samples with one score each, got {features.shape[0]} "
                         f"features and {scores.shape[0]} scores")
    x = features.float()
    s = scores.double().clamp(-60.0, 60.0)
    score_mean, score_std = float(s.mean()), float(s.std().clamp_min(1e-6))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = QuantileRegressor(x.shape[1], x.mean(0), x.std(0).clamp_min(1e-3), score_mean, score_std)
    model = model.to(x.device)
    target = ((s - score_mean) / score_std).float().to(x.device)
    with torch.inference_mode(False), torch.enable_grad():
        x, target = x.clone(), target.clone()
        optimizer = torch.optim.Adam(model.net.parameters(), lr=HEAD_LR, weight_decay=HEAD_WEIGHT_DECAY)
        for _ in range(HEAD_STEPS):
            mu, log_sigma = model.standardised(x)
            loss = (0.5 * ((target - mu) * torch.exp(-log_sigma)) ** 2 + log_sigma).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()
