"""Membership scores calibrated by reference models: RMIA and LiRA, offline (no reference model trains on x).

Both attacks compare the target's output on a sample x with the outputs of K reference models
trained on the attacker's population data, none of them on x. They only need the target's and
the reference models' log-probabilities, so scoring is one query pass plus vectorised arithmetic;
everything below runs in float64 on the tensors' device, in the log domain, so no probability
saturates (see `logprob_scores`).

RMIA (Zarifzadeh et al., ICML 2024), offline:
    ratio(x) = Pr(x | target) / Pr(x),  Pr(x | model) = p_y(x) (softmax probability of the label);
    score(x) = fraction of population samples z with ratio(x) / ratio(z) > gamma.
  Pr(x) averages Pr(x | model) over models trained with and without x. Offline, every reference
  model is OUT for x, and the paper approximates the missing IN half linearly:
    Pr(x) = ((1 + a) * mean_OUT p_y(x) + (1 - a)) / 2,   so   1 - Pr(x) = (1 + a) / 2 * mean_OUT (1 - p_y(x)).
  The population samples z are IN for about half of the reference models (trained on random halves
  of a pool that holds the z), so Pr(z) is the plain mean over all reference models, the paper's
  definition. Because the same z serve every x, the score is non-decreasing in ratio(x): z set the
  score's resolution (1 / number of z) and the hard decision, not the ranking of the x.

LiRA (Carlini et al., S&P 2022), offline: fit a Gaussian N(mu, sigma^2) to the reference models'
logit-scaled confidences phi = log p_y - log(1 - p_y) of x and test one-sided whether the target's
phi(x) is too large to be OUT. The score is the standardised statistic (phi_target - mu) / sigma,
monotone in the test's p-value (1 - Phi(score)) but without its rounding to 0 in the tail. With few
reference models one variance for all samples is better than one per sample (Carlini et al.,
Sec. VI), so that is the default.

Online (both papers' stronger setting, for targets whose training members the attacker knows to
audit): the reference models train on random halves of the attacker's members and non-members, so
each scored x is IN for about half of them. RMIA then needs no approximation, Pr(x) is the mean
of p_y(x) over all K models, and the population samples z are members of half of them too. LiRA
fits two Gaussians per sample, one to the IN models' phi(x) and one to the OUT models', and scores
the log-likelihood ratio of the target's phi(x) under them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .logprob_scores import true_class_log_terms

__all__ = [
    "RMIA_DEFAULT_A",
    "RMIA_DEFAULT_GAMMA",
    "lira_offline_scores",
    "lira_online_scores",
    "log_pr_offline",
    "rmia_log_ratio",
    "rmia_offline_scores",
    "rmia_online_scores",
    "ReferenceScores",
]

RMIA_DEFAULT_A = 0.3
"""RMIA's offline `a` (p_IN ~ a * p_OUT + 1 - a): privacy-meter's default; the paper tunes it per dataset."""

RMIA_DEFAULT_GAMMA = 1.0
"""RMIA's likelihood-ratio threshold gamma over population samples (the paper's default)."""


class ReferenceScores(NamedTuple):
    """Membership scores (higher = member) and the attack's own hard decisions."""

    scores: torch.Tensor
    decisions: torch.Tensor


def _log_mean_exp(values: torch.Tensor, dim: int) -> torch.Tensor:
    """log(mean(exp(values))) along `dim`, computed stably."""
    return torch.logsumexp(values, dim=dim) - math.log(values.shape[dim])


def log_pr_offline(reference_log_probs: torch.Tensor, labels: torch.Tensor, a: float) -> torch.Tensor:
    """log Pr(x) from OUT reference models, ((1 + a) mean p_y + 1 - a) / 2, in the log domain; [K, N, C] -> [N].

    Computed through the complement, log(1 - Pr(x)) = log((1 + a) / 2) + log mean (1 - p_y), so
    samples every model is sure about keep their differences.
    """
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"RMIA's a must lie in [0, 1], got {a}")
    _, lc_y = true_class_log_terms(reference_log_probs, labels)
    log_one_minus = math.log((1.0 + a) / 2.0) + _log_mean_exp(lc_y, dim=0)
    return torch.log1p(-torch.exp(log_one_minus))


def rmia_log_ratio(target_log_probs: torch.Tensor, labels: torch.Tensor, log_pr: torch.Tensor) -> torch.Tensor:
    """log Pr(x | target) - log Pr(x), float64 [N]."""
    lp_y, _ = true_class_log_terms(target_log_probs, labels)
    return lp_y - log_pr


def rmia_offline_scores(
    target_log_probs: torch.Tensor,
    reference_log_probs: torch.Tensor,
    labels: torch.Tensor,
    population_target_log_probs: torch.Tensor,
    population_reference_log_probs: torch.Tensor,
    population_labels: torch.Tensor,
    *,
    a: float = RMIA_DEFAULT_A,
    gamma: float = RMIA_DEFAULT_GAMMA,
) -> ReferenceScores:
    """RMIA offline (Zarifzadeh et al. 2024): fraction of z with ratio(x) / ratio(z) > gamma; a = 0.3, gamma = 1.

    `target_log_probs` [N, C] and `reference_log_probs` [K, N, C] are the outputs on the scored
    samples (OUT for every reference model); the population_* tensors are the same for the z
    samples, each IN for about half of the reference models. The comparison of every x with every
    z is one sorted search, O((N + Z) log Z). Decision: member iff the score exceeds 1/2.
    """
    log_ratio_z = _population_log_ratio(population_target_log_probs, population_reference_log_probs,
                                        population_labels, gamma)
    log_ratio_x = rmia_log_ratio(target_log_probs, labels, log_pr_offline(reference_log_probs, labels, a))
    return _rmia_score(log_ratio_x, log_ratio_z, gamma)


def lira_offline_scores(
    target_log_probs: torch.Tensor,
    reference_log_probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    global_variance: bool = True,
) -> ReferenceScores:
    """LiRA offline (Carlini et al. 2022): (phi_target - mu_OUT) / sigma_OUT of the logit-scaled confidence.

    `reference_log_probs` is [K, N, C] from models that never trained on the N samples. With
    `global_variance` sigma^2 is the mean over samples of the per-sample variance across models
    (needs K >= 2; with K = 1 sigma is 1, which ranks the same). Decision: member iff the target's
    confidence is above the OUT mean (one-sided p-value below 1/2).
    """
    lp_ref, lc_ref = true_class_log_terms(reference_log_probs, labels)
    phi_ref = lp_ref - lc_ref
    lp_t, lc_t = true_class_log_terms(target_log_probs, labels)
    mu = phi_ref.mean(dim=0)
    k = phi_ref.shape[0]
    if k < 2:
        sigma = torch.ones_like(mu)
    else:
        variance = phi_ref.var(dim=0, unbiased=True)
        if global_variance:
            variance = variance.mean().expand_as(mu)
        # A sample every model scores identically has zero spread; a floor keeps the score finite.
        sigma = variance.clamp_min(1e-12).sqrt()
    scores = (lp_t - lc_t - mu) / sigma
    return ReferenceScores(scores, scores > 0)


def _population_log_ratio(population_target_log_probs: torch.Tensor, population_reference_log_probs: torch.Tensor,
                          population_labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """log ratio(z) of every population sample, Pr(z) the mean p_y(z) over all reference models
    (each z is IN for about half of them, offline and online alike); checks RMIA's inputs."""
    if gamma <= 0:
        raise ValueError(f"RMIA's gamma must be positive, got {gamma}")
    if population_labels.numel() == 0:
        raise ValueError("RMIA needs at least one population sample z")
    lp_z, _ = true_class_log_terms(population_reference_log_probs, population_labels)
    return rmia_log_ratio(population_target_log_probs, population_labels, _log_mean_exp(lp_z, dim=0))


def _rmia_score(log_ratio_x: torch.Tensor, log_ratio_z: torch.Tensor, gamma: float) -> ReferenceScores:
    """Fraction of z with ratio(x) / ratio(z) > gamma, by one sorted search; decision: above 1/2."""
    # ratio(x) / ratio(z) > gamma  <=>  log ratio(z) < log ratio(x) - log gamma.
    sorted_z = torch.sort(log_ratio_z).values
    below = torch.searchsorted(sorted_z, log_ratio_x - math.log(gamma), side="left")
    scores = below.to(torch.float64) / sorted_z.numel()
    return ReferenceScores(scores, scores > 0.5)


def rmia_online_scores(
    target_log_probs: torch.Tensor,
    reference_log_probs: torch.Tensor,
    labels: torch.Tensor,
    population_target_log_probs: torch.Tensor,
    population_reference_log_probs: torch.Tensor,
    population_labels: torch.Tensor,
    *,
    gamma: float = RMIA_DEFAULT_GAMMA,
) -> ReferenceScores:
    """RMIA online (Zarifzadeh et al. 2024): Pr(x) is the mean p_y(x) over all K models, IN and OUT alike.

    Every x and z must be IN for about half of the reference models (random halves of a pool that
    holds them); which ones does not enter the score. Shapes as `rmia_offline_scores`.
    """
    log_ratio_z = _population_log_ratio(population_target_log_probs, population_reference_log_probs,
                                        population_labels, gamma)
    lp_x, _ = true_class_log_terms(reference_log_probs, labels)
    log_ratio_x = rmia_log_ratio(target_log_probs, labels, _log_mean_exp(lp_x, dim=0))
    return _rmia_score(log_ratio_x, log_ratio_z, gamma)


def _gaussian_fit(phi: torch.Tensor, mask: torch.Tensor, global_variance: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and standard deviation of phi [K, N] over the models where mask [K, N] holds.

    The global variance pools every sample's squared deviations (sum over samples of n - 1 degrees
    of freedom); a sample with fewer than two models uses the pooled one even per sample.
    """
    weights = mask.to(phi.dtype)
    n = weights.sum(dim=0)
    if bool((n < 1).any()):
        raise ValueError("online LiRA needs every scored sample IN for at least one model and OUT for another")
    mu = (phi * weights).sum(dim=0) / n
    squares = ((phi - mu) ** 2 * weights).sum(dim=0)
    dof = (n - 1).sum()
    pooled = squares.sum() / dof if float(dof) > 0 else torch.ones((), dtype=phi.dtype, device=phi.device)
    if global_variance:
        variance = pooled.expand_as(mu)
    else:
        variance = torch.where(n >= 2, squares / (n - 1).clamp_min(1), pooled)
    return mu, variance.clamp_min(1e-12).sqrt()


def lira_online_scores(
    target_log_probs: torch.Tensor,
    reference_log_probs: torch.Tensor,
    labels: torch.Tensor,
    reference_in: torch.Tensor,
    *,
    global_variance: bool = True,
) -> ReferenceScores:
    """LiRA online (Carlini et al. 2022): log N(phi; mu_IN, s_IN) - log N(phi; mu_OUT, s_OUT), per sample.

    `reference_in` [K, N] says which models trained on each sample. The means are per sample; the
    variances are one per side (IN, OUT) by default, as Carlini et al. advise below 64 models, or
    per sample. Decision: member iff the ratio is above 0 (IN more likely).
    """
    if tuple(reference_in.shape) != tuple(reference_log_probs.shape[:2]):
        raise ValueError(f"reference_in must have shape {tuple(reference_log_probs.shape[:2])}, "
                         f"got {tuple(reference_in.shape)}")
    lp_ref, lc_ref = true_class_log_terms(reference_log_probs, labels)
    lp_t, lc_t = true_class_log_terms(target_log_probs, labels)
    phi_ref, phi_t = lp_ref - lc_ref, lp_t - lc_t
    reference_in = reference_in.to(phi_ref.device, torch.bool)
    mu_in, s_in = _gaussian_fit(phi_ref, reference_in, global_variance)
    mu_out, s_out = _gaussian_fit(phi_ref, ~reference_in, global_variance)
    scores = (0.5 * ((phi_t - mu_out) / s_out) ** 2 + torch.log(s_out)
              - 0.5 * ((phi_t - mu_in) / s_in) ** 2 - torch.log(s_in))
    return ReferenceScores(scores, scores > 0)
