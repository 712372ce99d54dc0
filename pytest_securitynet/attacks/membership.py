"""Membership inference attacks over target-model posteriors (SecurityNet, Sec. 3.2).

Threat model (SecurityNet, Sec. 3.2): the adversary holds posteriors of some
known members (part of the training set) and of non-members (the test set).
Everything here is a pure function of those posteriors and the true labels,
written in torch so that it runs on whatever device the tensors live on.

Protocol: members and non-members are balanced (the larger group is
subsampled, seeded), each group is split in two seeded halves; attacks that
learn anything (thresholds, the MLP) learn on the training halves and every
metric is computed on the held-out halves only.

Every attack produces a continuous *membership score* (higher means "more
likely a member") and a hard decision. ``auc`` and the TPR-at-low-FPR numbers
are threshold-free statistics of the score on the held-out half;
``balanced_accuracy`` is the learned decision rule applied to the held-out
half; ``best_balanced_accuracy`` is the best single threshold on the held-out
half (the usual optimistic "attack accuracy").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "ATTACKS",
    "AttackerSplit",
    "attacker_split",
    "cross_entropy_loss",
    "modified_entropy",
    "prediction_correctness",
    "prediction_entropy",
    "roc_auc",
    "roc_curve_torch",
    "run_membership_attacks",
    "top_k_posteriors",
    "tpr_at_fpr",
    "true_class_confidence",
]

logger = logging.getLogger(__name__)

ATTACKS: tuple[str, ...] = (
    "correctness",
    "confidence-global",
    "confidence-classwise",
    "entropy-global",
    "entropy-classwise",
    "mentropy-global",
    "mentropy-classwise",
    "loss",
    "mlp-full",
    "mlp-top3",
)

# Floor applied to probabilities (and to 1 - p) before taking a log, as in the
# reference code of Song & Mittal (2021). Scores are computed in float64, where
# 1e-30 is far from underflow, so -log(floor) ~ 69 bounds the loss/entropy
# terms while keeping every distinguishable float32 probability distinct.
# Probabilities below the floor (including exact zeros) tie with each other.
PROB_FLOOR = 1e-30

# Classwise thresholds are learned for a class only when the training half
# holds at least this many members AND this many non-members of that class;
# other classes use the global threshold.
DEFAULT_MIN_CLASS_SAMPLES = 10

# MLP attack (SecurityNet, Sec. 3.2): hidden layers 64 and 32 with ReLU, Adam
# with lr 0.01, 50 epochs, binary output (one logit + BCE, equivalent to a
# two-way softmax). We use shuffled mini-batches of 128: full-batch training
# would give only 50 Adam steps, too few to fit the attack model.
MLP_HIDDEN = (64, 32)
MLP_LR = 0.01
MLP_BATCH_SIZE = 128

LOW_FPR_TARGETS = {"tpr_at_fpr_1e-2": 1e-2, "tpr_at_fpr_1e-3": 1e-3}

# Offsets that give each seeded random stream its own generator.
_SPLIT_STREAM = 0
_MLP_STREAMS = {"mlp-full": 1, "mlp-top3": 2}


# --------------------------------------------------------------------------
# Score functions (per-sample statistics of a posterior).
# --------------------------------------------------------------------------


def _log_floor(p: torch.Tensor) -> torch.Tensor:
    """log(max(p, PROB_FLOOR)) in float64."""
    return torch.log(p.to(torch.float64).clamp_min(PROB_FLOOR))


def _true_class_prob(posteriors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Probability assigned to the true label, float64, shape [N]."""
    return posteriors.to(torch.float64).gather(1, labels.view(-1, 1)).squeeze(1)


def prediction_correctness(posteriors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 where argmax equals the label, else 0.0 (Yeom et al. 2018; Song & Mittal 2021 baseline)."""
    return (posteriors.argmax(dim=1) == labels).to(torch.float64)


def true_class_confidence(posteriors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Posterior of the true class; higher for members (Song & Mittal 2021, confidence attack)."""
    return _true_class_prob(posteriors, labels)


def cross_entropy_loss(posteriors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy loss -log p_y; lower for members (Yeom et al. 2018, loss attack)."""
    return -_log_floor(_true_class_prob(posteriors, labels))


def prediction_entropy(posteriors: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of the posterior; lower for members (Salem et al. 2019; Song & Mittal 2021)."""
    p = posteriors.to(torch.float64)
    return -(p * _log_floor(p)).sum(dim=1)


def modified_entropy(posteriors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Modified entropy -(1-p_y)log p_y - sum_{i!=y} p_i log(1-p_i); lower for members (Song & Mittal 2021)."""
    p = posteriors.to(torch.float64)
    p_true = _true_class_prob(p, labels)
    others = -(p * _log_floor(1.0 - p))
    others = others.sum(dim=1) - others.gather(1, labels.view(-1, 1)).squeeze(1)
    return -(1.0 - p_true) * _log_floor(p_true) + others


def top_k_posteriors(posteriors: torch.Tensor, k: int = 3) -> torch.Tensor:
    """The k largest posteriors of each row, sorted descending (Salem et al. 2019; SecurityNet top-3 MLP input)."""
    k = min(k, posteriors.shape[1])
    return torch.topk(posteriors, k, dim=1, largest=True, sorted=True).values


# Membership scores: the metric signed so that higher means "member".
_METRIC_SCORES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "correctness": prediction_correctness,
    "confidence": true_class_confidence,
    "entropy": lambda post, _labels: -prediction_entropy(post),
    "mentropy": lambda post, labels: -modified_entropy(post, labels),
    "loss": lambda post, labels: -cross_entropy_loss(post, labels),
}

# --------------------------------------------------------------------------
# ROC helpers.
# --------------------------------------------------------------------------


def roc_curve_torch(
    scores: torch.Tensor, is_member: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ROC curve (fpr, tpr, thresholds) of "member iff score >= t", ties collapsed (Carlini et al. 2022).

    Points are float64, start at (0, 0) with threshold +inf and have one point
    per distinct score, so tied scores form one diagonal segment (which makes
    the trapezoidal AUC count ties as 0.5, like sklearn).
    """
    scores = scores.reshape(-1)
    if not scores.is_floating_point():
        scores = scores.to(torch.float64)
    labels = is_member.reshape(-1).to(device=scores.device, dtype=torch.bool)
    if scores.numel() != labels.numel():
        raise ValueError("scores and is_member must have the same number of elements")
    if scores.numel() == 0:
        raise ValueError("ROC needs at least one member and one non-member")
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN")
    order = torch.argsort(scores, descending=True)
    sorted_scores = scores[order]
    hits = labels[order].to(torch.int64)
    tps = torch.cumsum(hits, 0)
    fps = torch.arange(1, hits.numel() + 1, device=scores.device) - tps
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs at least one member and one non-member")
    block_end = torch.ones_like(labels)
    block_end[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    zero = torch.zeros(1, dtype=torch.float64, device=scores.device)
    fpr = torch.cat([zero, fps[block_end].to(torch.float64) / n_neg])
    tpr = torch.cat([zero, tps[block_end].to(torch.float64) / n_pos])
    inf = torch.full((1,), math.inf, dtype=sorted_scores.dtype, device=scores.device)
    thresholds = torch.cat([inf, sorted_scores[block_end]])
    return fpr, tpr, thresholds


def _auc_from_curve(fpr: torch.Tensor, tpr: torch.Tensor) -> float:
    """Trapezoidal area under an ROC curve."""
    return float(torch.trapezoid(tpr, fpr))


def _tpr_at_fpr_from_curve(fpr: torch.Tensor, tpr: torch.Tensor, target: float) -> float:
    """Largest TPR among ROC points with FPR <= target (no interpolation)."""
    # The tiny slack only absorbs float rounding of fp / n_neg versus target.
    return float(tpr[fpr <= target + 1e-12].max())


def roc_auc(scores: torch.Tensor, is_member: torch.Tensor) -> float:
    """ROC AUC of a membership score, ties counted as 0.5 (SecurityNet Sec. 3.2 reports AUC)."""
    return _auc_from_curve(*roc_curve_torch(scores, is_member)[:2])


def tpr_at_fpr(scores: torch.Tensor, is_member: torch.Tensor, fpr: float) -> float:
    """Largest TPR reachable by one threshold with FPR <= fpr, not interpolated (Carlini et al. 2022)."""
    return _tpr_at_fpr_from_curve(*roc_curve_torch(scores, is_member)[:2], fpr)


def _balanced_accuracy(decisions: torch.Tensor, is_member: torch.Tensor) -> float:
    """Mean of TPR and TNR of hard member/non-member decisions."""
    tpr = decisions[is_member].to(torch.float64).mean()
    tnr = (~decisions[~is_member]).to(torch.float64).mean()
    return float((tpr + tnr) / 2)


def _metrics(scores: torch.Tensor, decisions: torch.Tensor, is_member: torch.Tensor) -> dict[str, float]:
    """All reported metrics of one attack on the scored half."""
    fpr, tpr, _ = roc_curve_torch(scores, is_member)
    result: dict[str, float] = {"auc": _auc_from_curve(fpr, tpr)}
    for key, target in LOW_FPR_TARGETS.items():
        result[key] = _tpr_at_fpr_from_curve(fpr, tpr, target)
    result["balanced_accuracy"] = _balanced_accuracy(decisions, is_member)
    result["best_balanced_accuracy"] = float(((tpr + 1.0 - fpr) / 2).max())
    result["n_members"] = int(is_member.sum())
    result["n_nonmembers"] = int((~is_member).sum())
    return result


# --------------------------------------------------------------------------
# Attacker data split.
# --------------------------------------------------------------------------


class AttackerSplit(NamedTuple):
    """Row indices (CPU, int64) into the member / non-member inputs for each half."""

    member_train: torch.Tensor
    member_eval: torch.Tensor
    nonmember_train: torch.Tensor
    nonmember_eval: torch.Tensor


def _generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for one named random stream of one seed."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)


def attacker_split(n_members: int, n_nonmembers: int, seed: int = 0) -> AttackerSplit:
    """Seeded balanced subsample and half split of the attacker's data (SecurityNet Sec. 3.2 protocol).

    Both groups are cut to n = min(n_members, n_nonmembers) random rows; the
    first n // 2 of each permutation train the attack, the rest score it.
    """
    n = min(n_members, n_nonmembers)
    if n < 2:
        raise ValueError("need at least 2 members and 2 non-members")
    gen = _generator(seed, _SPLIT_STREAM)
    members = torch.randperm(n_members, generator=gen)[:n]
    nonmembers = torch.randperm(n_nonmembers, generator=gen)[:n]
    half = n // 2
    return AttackerSplit(members[:half], members[half:], nonmembers[:half], nonmembers[half:])


class _Half(NamedTuple):
    """Posteriors, labels and membership flags of one half of the attacker's data."""

    posteriors: torch.Tensor
    labels: torch.Tensor
    is_member: torch.Tensor


def _make_half(
    member_post: torch.Tensor,
    member_labels: torch.Tensor,
    member_idx: torch.Tensor,
    nonmember_post: torch.Tensor,
    nonmember_labels: torch.Tensor,
    nonmember_idx: torch.Tensor,
) -> _Half:
    """Concatenate the selected members and non-members into one half."""
    device = member_post.device
    member_idx, nonmember_idx = member_idx.to(device), nonmember_idx.to(device)
    flags = torch.cat(
        [
            torch.ones(member_idx.numel(), dtype=torch.bool, device=device),
            torch.zeros(nonmember_idx.numel(), dtype=torch.bool, device=device),
        ]
    )
    return _Half(
        torch.cat([member_post[member_idx], nonmember_post[nonmember_idx]]),
        torch.cat([member_labels[member_idx], nonmember_labels[nonmember_idx]]),
        flags,
    )


# --------------------------------------------------------------------------
# Threshold learning.
# --------------------------------------------------------------------------


def _fit_thresholds(
    scores: torch.Tensor,
    is_member: torch.Tensor,
    groups: torch.Tensor,
    n_groups: int,
    min_samples: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group threshold maximising balanced accuracy of "member iff score >= t".

    Vectorised over groups: rows are sorted by (group, score descending), the
    within-group cumulative member/non-member counts give TPR/FPR at every
    distinct score, and the best candidate of each group is picked with
    scatter reductions (ties: the highest threshold, then moved halfway to the
    next lower score). Returns (thresholds,
    valid); a group is valid when it has >= min_samples members and
    non-members.
    """
    device = scores.device
    n = scores.numel()
    by_score = torch.argsort(scores, descending=True, stable=True)
    order = by_score[torch.argsort(groups[by_score], stable=True)]
    s, g, y = scores[order], groups[order], is_member[order].to(torch.int64)

    n_pos = torch.bincount(g[y == 1], minlength=n_groups)
    n_neg = torch.bincount(g[y == 0], minlength=n_groups)
    starts = torch.cumsum(n_pos + n_neg, 0) - (n_pos + n_neg)
    tp_all, fp_all = torch.cumsum(y, 0), torch.cumsum(1 - y, 0)
    before = starts.clamp(max=n - 1)
    tp = tp_all - (tp_all - y)[before][g]
    fp = fp_all - (fp_all - (1 - y))[before][g]

    bal = 0.5 * (
        tp.to(torch.float64) / n_pos.clamp_min(1)[g] + 1.0 - fp.to(torch.float64) / n_neg.clamp_min(1)[g]
    )
    block_end = torch.ones(n, dtype=torch.bool, device=device)
    block_end[:-1] = (s[1:] != s[:-1]) | (g[1:] != g[:-1])
    bal = torch.where(block_end, bal, torch.full_like(bal, -math.inf))

    best = torch.full((n_groups,), -math.inf, dtype=torch.float64, device=device)
    best = best.scatter_reduce(0, g, bal, reduce="amax")
    positions = torch.arange(n, device=device)
    candidates = torch.where(block_end & (bal == best[g]), positions, torch.full_like(positions, n))
    first = torch.full((n_groups,), n, dtype=torch.int64, device=device)
    first = first.scatter_reduce(0, g, candidates, reduce="amin")
    chosen = first.clamp(max=n - 1)
    # Place the threshold halfway to the next lower score of the same group
    # (as decision stumps do) so the training decisions are unchanged but
    # unseen scores in the gap are not all pushed to one side.
    following = (chosen + 1).clamp(max=n - 1)
    has_next = (chosen + 1 < n) & (g[following] == g[chosen])
    thresholds = torch.where(has_next, (s[chosen] + s[following]) / 2, s[chosen])
    valid = (n_pos >= min_samples) & (n_neg >= min_samples)
    return thresholds, valid


def _global_threshold(scores: torch.Tensor, is_member: torch.Tensor) -> torch.Tensor:
    """One threshold (0-d tensor) maximising balanced accuracy on the training half."""
    groups = torch.zeros_like(scores, dtype=torch.int64)
    thresholds, _ = _fit_thresholds(scores, is_member, groups, 1, 1)
    return thresholds[0]


# --------------------------------------------------------------------------
# Attacks. Each returns (membership scores, hard decisions) on the eval half.
# --------------------------------------------------------------------------


def _correctness_attack(train: _Half, evaluation: _Half, **_: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Label-only baseline: member iff correctly classified (Yeom et al. 2018); nothing is learned."""
    scores = prediction_correctness(evaluation.posteriors, evaluation.labels)
    return scores, scores > 0.5


def _global_threshold_attack(
    metric: str, train: _Half, evaluation: _Half, **_: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single threshold on a signed metric (Song & Mittal 2021; Yeom et al. 2018 for the loss)."""
    score_fn = _METRIC_SCORES[metric]
    threshold = _global_threshold(score_fn(train.posteriors, train.labels), train.is_member)
    scores = score_fn(evaluation.posteriors, evaluation.labels)
    return scores, scores >= threshold


def _classwise_threshold_attack(
    metric: str, train: _Half, evaluation: _Half, *, min_class_samples: int, **_: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-conditional thresholds on a signed metric (Song & Mittal 2021, Sec. 3.2).

    The score is the margin to the true class's threshold, so both the AUC
    and the decision ("member iff margin >= 0") reflect the per-class rule.
    """
    score_fn = _METRIC_SCORES[metric]
    n_classes = train.posteriors.shape[1]
    train_scores = score_fn(train.posteriors, train.labels)
    global_t = _global_threshold(train_scores, train.is_member)
    class_t, valid = _fit_thresholds(train_scores, train.is_member, train.labels, n_classes, min_class_samples)
    thresholds = torch.where(valid, class_t, global_t)
    logger.debug("%s: %d/%d classes use their own threshold", metric, int(valid.sum()), n_classes)
    margins = score_fn(evaluation.posteriors, evaluation.labels) - thresholds[evaluation.labels]
    return margins, margins >= 0


def _build_mlp(n_features: int, seed: int) -> nn.Sequential:
    """The SecurityNet attack MLP (64-32 ReLU, one logit), initialised from `seed` on CPU."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(n_features, MLP_HIDDEN[0]),
            nn.ReLU(),
            nn.Linear(MLP_HIDDEN[0], MLP_HIDDEN[1]),
            nn.ReLU(),
            nn.Linear(MLP_HIDDEN[1], 1),
        )


def _train_mlp(features: torch.Tensor, is_member: torch.Tensor, *, epochs: int, gen: torch.Generator) -> nn.Sequential:
    """Train the attack MLP with Adam (lr 0.01) on shuffled mini-batches (SecurityNet Sec. 3.2)."""
    model = _build_mlp(features.shape[1], int(torch.randint(2**31 - 1, (1,), generator=gen))).to(features.device)
    # The fused Adam kernel (CPU and CUDA) cuts the per-step overhead ~3x.
    fused = features.device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(model.parameters(), lr=MLP_LR, fused=fused)
    loss_fn = nn.BCEWithLogitsLoss()
    targets = is_member.to(torch.float32)
    n = features.shape[0]
    for _ in range(epochs):
        permutation = torch.randperm(n, generator=gen).to(features.device)
        for start in range(0, n, MLP_BATCH_SIZE):
            batch = permutation[start : start + MLP_BATCH_SIZE]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(features[batch]).squeeze(1), targets[batch])
            loss.backward()
            optimizer.step()
    return model


_MLP_FEATURES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mlp-full": lambda posteriors: posteriors,
    "mlp-top3": top_k_posteriors,
}


def _mlp_attack(
    name: str, train: _Half, evaluation: _Half, *, seed: int, mlp_epochs: int, **_: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLP attack on posterior features (Shokri et al. 2017; Salem et al. 2019; SecurityNet: 64-32, Adam 0.01)."""
    feature_fn = _MLP_FEATURES[name]
    gen = _generator(seed, _MLP_STREAMS[name])
    # Training must work even if the caller is in no_grad / inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        train_x = feature_fn(train.posteriors).to(torch.float32).clone()
        model = _train_mlp(train_x, train.is_member.clone(), epochs=mlp_epochs, gen=gen)
    with torch.no_grad():
        logits = model(feature_fn(evaluation.posteriors).to(torch.float32)).squeeze(1)
    return logits.to(torch.float64), logits >= 0


_AttackFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _attack_function(name: str) -> _AttackFn:
    """Map an attack name from ATTACKS to its implementation."""
    if name == "correctness":
        return _correctness_attack
    if name == "loss":
        return partial(_global_threshold_attack, "loss")
    if name.startswith("mlp-"):
        return partial(_mlp_attack, name)
    metric, variant = name.split("-")
    if variant == "global":
        return partial(_global_threshold_attack, metric)
    return partial(_classwise_threshold_attack, metric)


# --------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------


def _check_inputs(posteriors: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    """Raise ValueError unless posteriors is [N, C] and labels is [N] int64 in range."""
    if posteriors.dim() != 2:
        raise ValueError(f"{what} posteriors must be 2-D [N, C], got shape {tuple(posteriors.shape)}")
    if not posteriors.is_floating_point() or not bool(torch.isfinite(posteriors).all()):
        raise ValueError(f"{what} posteriors must be finite floating-point probabilities")
    if labels.shape != (posteriors.shape[0],) or labels.dtype != torch.int64:
        raise ValueError(f"{what} labels must be int64 of shape [{posteriors.shape[0]}]")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= posteriors.shape[1]):
        raise ValueError(f"{what} labels must lie in [0, {posteriors.shape[1]})")


def _resolve_attacks(attacks: Sequence[str] | None) -> tuple[str, ...]:
    """Validate a requested subset of attacks (default: all of ATTACKS)."""
    if attacks is None:
        return ATTACKS
    if isinstance(attacks, str):
        attacks = (attacks,)
    unknown = [name for name in attacks if name not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown membership attacks {unknown}; known: {ATTACKS}")
    return tuple(attacks)


def run_membership_attacks(
    member_posteriors: torch.Tensor,
    member_labels: torch.Tensor,
    nonmember_posteriors: torch.Tensor,
    nonmember_labels: torch.Tensor,
    *,
    seed: int = 0,
    mlp_epochs: int = 50,
    device: torch.device | str | None = None,
    attacks: Sequence[str] | None = None,
    min_class_samples: int = DEFAULT_MIN_CLASS_SAMPLES,
) -> dict[str, dict[str, float]]:
    """Run membership inference attacks (SecurityNet Sec. 3.2) and return metrics per attack name.

    Members/non-members are balanced and split with `attacker_split(seed)`;
    attacks learn on the training halves and are scored on the other halves.
    Each result holds auc, tpr_at_fpr_1e-2, tpr_at_fpr_1e-3,
    balanced_accuracy, best_balanced_accuracy, n_members and n_nonmembers
    (the last two are ints, counted on the scored half).
    """
    _check_inputs(member_posteriors, member_labels, "member")
    _check_inputs(nonmember_posteriors, nonmember_labels, "non-member")
    if member_posteriors.shape[1] != nonmember_posteriors.shape[1]:
        raise ValueError("members and non-members must have the same number of classes")
    if min_class_samples < 1:
        raise ValueError("min_class_samples must be at least 1")
    names = _resolve_attacks(attacks)
    target = torch.device(device) if device is not None else member_posteriors.device
    tensors = [t.to(target) for t in (member_posteriors, member_labels, nonmember_posteriors, nonmember_labels)]
    split = attacker_split(member_posteriors.shape[0], nonmember_posteriors.shape[0], seed)
    train = _make_half(*tensors[:2], split.member_train, *tensors[2:], split.nonmember_train)
    evaluation = _make_half(*tensors[:2], split.member_eval, *tensors[2:], split.nonmember_eval)

    results: dict[str, dict[str, float]] = {}
    for name in names:
        scores, decisions = _attack_function(name)(
            train, evaluation, seed=seed, mlp_epochs=mlp_epochs, min_class_samples=min_class_samples
        )
        results[name] = _metrics(scores, decisions, evaluation.is_member)
    return results
