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

Outputs: the paper's attacks (`ATTACKS`) read float32 posteriors, as SecurityNet does. The
`LOG_PROB_ATTACKS` compute the same statistics from log-probabilities (a log-softmax of the
logits), which do not saturate at 1.0 (`logprob_scores`); the `REFERENCE_ATTACKS` (RMIA, LiRA)
also read log-probabilities and compare them with reference models' (`membership_reference`).
`ATTACK_OUTPUT` says which output each attack sees.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from .logprob_scores import (
    check_log_probs,
    entropy_from_log_probs,
    logit_confidence,
    loss_from_log_probs,
    modified_entropy_from_log_probs,
)
from .membership_quantile import QuantileRegressor
from .membership_reference import (
    RMIA_DEFAULT_A,
    RMIA_DEFAULT_GAMMA,
    lira_offline_scores,
    lira_online_scores,
    rmia_offline_scores,
    rmia_online_scores,
)

__all__ = [
    "ALL_ATTACKS",
    "ATTACKS",
    "ATTACK_OUTPUT",
    "LOG_PROBS",
    "LOG_PROB_ATTACKS",
    "OFFLINE_ATTACKS",
    "ONLINE_ATTACKS",
    "QUANTILE_ATTACKS",
    "QuantileThresholds",
    "POSTERIORS",
    "REFERENCE_ATTACKS",
    "AttackerSplit",
    "ReferenceOutputs",
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
"""The paper's attacks (SecurityNet Sec. 3.2), on float32 posteriors."""

LOG_PROB_ATTACKS: tuple[str, ...] = (
    "logit-confidence-global",
    "logit-confidence-classwise",
    "entropy-logp-global",
    "entropy-logp-classwise",
    "mentropy-logp-global",
    "mentropy-logp-classwise",
    "loss-logp",
)
"""The threshold attacks on log-probabilities: no saturation at p = 1."""

OFFLINE_ATTACKS: tuple[str, ...] = ("rmia-offline", "lira-offline")
"""Calibrated by reference models that never trained on the scored samples (`ReferenceOutputs` without IN masks)."""

ONLINE_ATTACKS: tuple[str, ...] = ("rmia-online", "lira-online")
"""Calibrated by reference models trained on random halves of the attacker's members and non-members
(`ReferenceOutputs` with `member_in` / `nonmember_in`)."""

REFERENCE_ATTACKS: tuple[str, ...] = OFFLINE_ATTACKS + ONLINE_ATTACKS
"""Attacks calibrated by reference models, on log-probabilities (need `ReferenceOutputs`)."""

QUANTILE_ATTACKS: tuple[str, ...] = ("quantile",)
"""Per-example thresholds from a quantile regressor fitted on public non-members (need `QuantileThresholds`)."""

ALL_ATTACKS: tuple[str, ...] = ATTACKS + LOG_PROB_ATTACKS + REFERENCE_ATTACKS + QUANTILE_ATTACKS

POSTERIORS, LOG_PROBS = "posteriors", "log-probs"
ATTACK_OUTPUT: dict[str, str] = {name: POSTERIORS if name in ATTACKS else LOG_PROBS for name in ALL_ATTACKS}
"""The target output each attack reads: float32 softmax posteriors or log-probabilities."""

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


# Membership scores: the metric signed so that higher means "member", by the output it reads.
_ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_POSTERIOR_SCORES: dict[str, _ScoreFn] = {
    "correctness": prediction_correctness,
    "confidence": true_class_confidence,
    "entropy": lambda post, _labels: -prediction_entropy(post),
    "mentropy": lambda post, labels: -modified_entropy(post, labels),
    "loss": lambda post, labels: -cross_entropy_loss(post, labels),
}
_LOG_PROB_SCORES: dict[str, _ScoreFn] = {
    "logit-confidence": logit_confidence,
    "entropy-logp": lambda lp, _labels: -entropy_from_log_probs(lp),
    "mentropy-logp": lambda lp, labels: -modified_entropy_from_log_probs(lp, labels),
    "loss-logp": lambda lp, labels: -loss_from_log_probs(lp, labels),
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


class ReferenceOutputs(NamedTuple):
    """Reference models' log-probabilities for RMIA and LiRA, and the population samples z.

    `member_log_probs` [K, n_members, C] and `nonmember_log_probs` [K, n_nonmembers, C] are
    row-aligned with the attacker's members and non-members; the rows the attacks score (the
    evaluation halves of `attacker_split`) must be OUT for every reference model. The population
    samples z are scored by the target (`target_population_log_probs` [Z, C]) and by the
    reference models (`population_log_probs` [K, Z, C]); each z should be IN for about half of
    the reference models.

    Online reference models also trained on the scored samples: `member_in` [K, n_members] and
    `nonmember_in` [K, n_nonmembers] say which models did; offline they are None.
    """

    member_log_probs: torch.Tensor
    nonmember_log_probs: torch.Tensor
    population_log_probs: torch.Tensor
    target_population_log_probs: torch.Tensor
    population_labels: torch.Tensor
    member_in: torch.Tensor | None = None
    nonmember_in: torch.Tensor | None = None

    @property
    def online(self) -> bool:
        return self.member_in is not None


class ScoredHalf(NamedTuple):
    """One attack on the scored half: membership score and decision per sample, and the truth."""

    scores: torch.Tensor
    decisions: torch.Tensor
    is_member: torch.Tensor


class QuantileThresholds(NamedTuple):
    """A fitted quantile regressor (`membership_quantile`) and its features of the attacker's samples, row-aligned."""

    regressor: QuantileRegressor
    member_features: torch.Tensor
    nonmember_features: torch.Tensor


class _Group(NamedTuple):
    """Everything known about one group (members or non-members), row-aligned."""

    posteriors: torch.Tensor | None
    log_probs: torch.Tensor | None
    labels: torch.Tensor
    reference_log_probs: torch.Tensor | None
    reference_in: torch.Tensor | None = None
    quantile_features: torch.Tensor | None = None


class _Half(NamedTuple):
    """Outputs, labels and membership flags of one half of the attacker's data (absent outputs are None)."""

    posteriors: torch.Tensor | None
    log_probs: torch.Tensor | None
    labels: torch.Tensor
    is_member: torch.Tensor
    reference_log_probs: torch.Tensor | None
    reference_in: torch.Tensor | None = None
    quantile_features: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes of whichever output this half holds."""
        output = self.posteriors if self.posteriors is not None else self.log_probs
        assert output is not None
        return output.shape[1]

    def output(self, kind: str) -> torch.Tensor:
        """The target output of `kind` (POSTERIORS or LOG_PROBS); present, or the caller's check failed."""
        value = self.posteriors if kind == POSTERIORS else self.log_probs
        assert value is not None, kind
        return value


def _make_half(members: _Group, member_idx: torch.Tensor, nonmembers: _Group, nonmember_idx: torch.Tensor) -> _Half:
    """Concatenate the selected members and non-members into one half."""
    device = members.labels.device
    member_idx, nonmember_idx = member_idx.to(device), nonmember_idx.to(device)
    flags = torch.cat(
        [
            torch.ones(member_idx.numel(), dtype=torch.bool, device=device),
            torch.zeros(nonmember_idx.numel(), dtype=torch.bool, device=device),
        ]
    )

    def rows(member: torch.Tensor | None, nonmember: torch.Tensor | None, dim: int = 0) -> torch.Tensor | None:
        """The selected members' rows then non-members' rows along `dim`; None when absent."""
        if member is None or nonmember is None:
            return None
        return torch.cat([member.index_select(dim, member_idx), nonmember.index_select(dim, nonmember_idx)], dim=dim)

    labels = rows(members.labels, nonmembers.labels)
    assert labels is not None
    return _Half(
        rows(members.posteriors, nonmembers.posteriors),
        rows(members.log_probs, nonmembers.log_probs),
        labels,
        flags,
        rows(members.reference_log_probs, nonmembers.reference_log_probs, dim=1),
        rows(members.reference_in, nonmembers.reference_in, dim=1),
        rows(members.quantile_features, nonmembers.quantile_features),
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
    scores = prediction_correctness(evaluation.output(POSTERIORS), evaluation.labels)
    return scores, scores > 0.5


def _metric_scores(kind: str, metric: str, half: _Half) -> torch.Tensor:
    """The signed metric `metric` of one half, from the output `kind`."""
    table = _POSTERIOR_SCORES if kind == POSTERIORS else _LOG_PROB_SCORES
    return table[metric](half.output(kind), half.labels)


def _global_threshold_attack(
    kind: str, metric: str, train: _Half, evaluation: _Half, **_: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single threshold on a signed metric (Song & Mittal 2021; Yeom et al. 2018 for the loss)."""
    threshold = _global_threshold(_metric_scores(kind, metric, train), train.is_member)
    scores = _metric_scores(kind, metric, evaluation)
    return scores, scores >= threshold


def _classwise_threshold_attack(
    kind: str, metric: str, train: _Half, evaluation: _Half, *, min_class_samples: int, **_: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-conditional thresholds on a signed metric (Song & Mittal 2021, Sec. 3.2).

    The score is the margin to the true class's threshold, so both the AUC
    and the decision ("member iff margin >= 0") reflect the per-class rule.
    """
    n_classes = train.num_classes
    train_scores = _metric_scores(kind, metric, train)
    global_t = _global_threshold(train_scores, train.is_member)
    class_t, valid = _fit_thresholds(train_scores, train.is_member, train.labels, n_classes, min_class_samples)
    thresholds = torch.where(valid, class_t, global_t)
    logger.debug("%s: %d/%d classes use their own threshold", metric, int(valid.sum()), n_classes)
    margins = _metric_scores(kind, metric, evaluation) - thresholds[evaluation.labels]
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
        train_x = feature_fn(train.output(POSTERIORS)).to(torch.float32).clone()
        model = _train_mlp(train_x, train.is_member.clone(), epochs=mlp_epochs, gen=gen)
    with torch.no_grad():
        logits = model(feature_fn(evaluation.output(POSTERIORS)).to(torch.float32)).squeeze(1)
    return logits.to(torch.float64), logits >= 0


def _rmia_attack(
    train: _Half, evaluation: _Half, *, reference: ReferenceOutputs, rmia_a: float, rmia_gamma: float, **_: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMIA offline (Zarifzadeh et al. 2024) on the evaluation half; learns nothing from the training half."""
    assert evaluation.reference_log_probs is not None
    result = rmia_offline_scores(
        evaluation.output(LOG_PROBS), evaluation.reference_log_probs, evaluation.labels,
        reference.target_population_log_probs, reference.population_log_probs, reference.population_labels,
        a=rmia_a, gamma=rmia_gamma,
    )
    return result.scores, result.decisions


def _lira_attack(
    train: _Half, evaluation: _Half, *, lira_global_variance: bool, **_: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """LiRA offline (Carlini et al. 2022) on the evaluation half; learns nothing from the training half."""
    assert evaluation.reference_log_probs is not None
    result = lira_offline_scores(
        evaluation.output(LOG_PROBS), evaluation.reference_log_probs, evaluation.labels,
        global_variance=lira_global_variance,
    )
    return result.scores, result.decisions


def _rmia_online_attack(
    train: _Half, evaluation: _Half, *, reference: ReferenceOutputs, rmia_gamma: float, **_: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMIA online on the evaluation half: the reference models trained on random halves of all held samples."""
    assert evaluation.reference_log_probs is not None
    result = rmia_online_scores(
        evaluation.output(LOG_PROBS), evaluation.reference_log_probs, evaluation.labels,
        reference.target_population_log_probs, reference.population_log_probs, reference.population_labels,
        gamma=rmia_gamma,
    )
    return result.scores, result.decisions


def _lira_online_attack(
    train: _Half, evaluation: _Half, *, lira_global_variance: bool, **_: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """LiRA online on the evaluation half: per-sample IN and OUT Gaussians."""
    assert evaluation.reference_log_probs is not None and evaluation.reference_in is not None
    result = lira_online_scores(
        evaluation.output(LOG_PROBS), evaluation.reference_log_probs, evaluation.labels, evaluation.reference_in,
        global_variance=lira_global_variance,
    )
    return result.scores, result.decisions


def _quantile_attack(
    train: _Half, evaluation: _Half, *, quantile: QuantileThresholds, **_: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantile regression (Bertran et al. 2023): the target's phi against its predicted non-member quantiles."""
    assert evaluation.quantile_features is not None
    phi = logit_confidence(evaluation.output(LOG_PROBS), evaluation.labels)
    return quantile.regressor.to(phi.device).membership_scores(evaluation.quantile_features, phi)


_AttackFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]

_ATTACK_FUNCTIONS: dict[str, _AttackFn] = {
    "correctness": _correctness_attack,
    "confidence-global": partial(_global_threshold_attack, POSTERIORS, "confidence"),
    "confidence-classwise": partial(_classwise_threshold_attack, POSTERIORS, "confidence"),
    "entropy-global": partial(_global_threshold_attack, POSTERIORS, "entropy"),
    "entropy-classwise": partial(_classwise_threshold_attack, POSTERIORS, "entropy"),
    "mentropy-global": partial(_global_threshold_attack, POSTERIORS, "mentropy"),
    "mentropy-classwise": partial(_classwise_threshold_attack, POSTERIORS, "mentropy"),
    "loss": partial(_global_threshold_attack, POSTERIORS, "loss"),
    "mlp-full": partial(_mlp_attack, "mlp-full"),
    "mlp-top3": partial(_mlp_attack, "mlp-top3"),
    "logit-confidence-global": partial(_global_threshold_attack, LOG_PROBS, "logit-confidence"),
    "logit-confidence-classwise": partial(_classwise_threshold_attack, LOG_PROBS, "logit-confidence"),
    "entropy-logp-global": partial(_global_threshold_attack, LOG_PROBS, "entropy-logp"),
    "entropy-logp-classwise": partial(_classwise_threshold_attack, LOG_PROBS, "entropy-logp"),
    "mentropy-logp-global": partial(_global_threshold_attack, LOG_PROBS, "mentropy-logp"),
    "mentropy-logp-classwise": partial(_classwise_threshold_attack, LOG_PROBS, "mentropy-logp"),
    "loss-logp": partial(_global_threshold_attack, LOG_PROBS, "loss-logp"),
    "rmia-offline": _rmia_attack,
    "lira-offline": _lira_attack,
    "rmia-online": _rmia_online_attack,
    "lira-online": _lira_online_attack,
    "quantile": _quantile_attack,
}


# --------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------


def _check_labels(labels: torch.Tensor, n_classes: int, what: str) -> None:
    """Raise ValueError unless labels is [N] int64 in [0, n_classes)."""
    if labels.dim() != 1 or labels.dtype != torch.int64:
        raise ValueError(f"{what} labels must be int64 of shape [N]")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"{what} labels must lie in [0, {n_classes})")


def _check_output(output: torch.Tensor, kind: str, n_rows: int, n_classes: int, what: str) -> None:
    """Raise ValueError unless `output` is a valid [n_rows, n_classes] output of `kind`."""
    if output.dim() != 2 or output.shape[0] != n_rows:
        raise ValueError(f"{what} {kind} must be 2-D [{n_rows}, C], got shape {tuple(output.shape)}")
    if output.shape[1] != n_classes:
        raise ValueError(f"{what} {kind} have {output.shape[1]} classes, expected {n_classes}")
    if kind == LOG_PROBS:
        check_log_probs(output, what)
    elif not output.is_floating_point() or not bool(torch.isfinite(output).all()):
        raise ValueError(f"{what} posteriors must be finite floating-point probabilities")


def _check_reference(reference: ReferenceOutputs, n_members: int, n_nonmembers: int, n_classes: int) -> None:
    """Raise ValueError unless the reference outputs have consistent [K, N, C] shapes and valid values."""
    k = reference.member_log_probs.shape[0] if reference.member_log_probs.dim() == 3 else -1
    n_z = reference.population_labels.shape[0] if reference.population_labels.dim() == 1 else -1
    expected = {
        "member_log_probs": (reference.member_log_probs, (k, n_members, n_classes)),
        "nonmember_log_probs": (reference.nonmember_log_probs, (k, n_nonmembers, n_classes)),
        "population_log_probs": (reference.population_log_probs, (k, n_z, n_classes)),
        "target_population_log_probs": (reference.target_population_log_probs, (n_z, n_classes)),
    }
    if k < 1 or n_z < 1:
        raise ValueError("reference outputs need K >= 1 models [K, N, C] and at least one population label")
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"reference {name} must have shape {shape}, got {tuple(tensor.shape)}")
        check_log_probs(tensor, f"reference {name}")
    if (reference.member_in is None) != (reference.nonmember_in is None):
        raise ValueError("pass reference member_in and nonmember_in together (online), or neither (offline)")
    for name, mask, n in (("member_in", reference.member_in, n_members),
                          ("nonmember_in", reference.nonmember_in, n_nonmembers)):
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (k, n)):
            raise ValueError(f"reference {name} must be bool of shape {(k, n)}, got {mask.dtype} {tuple(mask.shape)}")
    _check_labels(reference.population_labels, n_classes, "population")


def _available(has_posteriors: bool, has_log_probs: bool, reference: ReferenceOutputs | None,
               has_quantile: bool = False) -> tuple[str, ...]:
    """Every attack the given outputs allow, in ALL_ATTACKS order (offline or online ones by the reference's kind)."""
    usable = () if reference is None else ONLINE_ATTACKS if reference.online else OFFLINE_ATTACKS
    return tuple(
        name for name in ALL_ATTACKS
        if (has_posteriors if ATTACK_OUTPUT[name] == POSTERIORS else has_log_probs)
        and (name in usable or name not in REFERENCE_ATTACKS)
        and (has_quantile or name not in QUANTILE_ATTACKS)
    )


def _resolve_attacks(attacks: Sequence[str] | None, available: tuple[str, ...]) -> tuple[str, ...]:
    """Validate a requested subset of attacks (default: every attack the given outputs allow)."""
    if attacks is None:
        if not available:
            raise ValueError("no attack can run: pass posteriors, log-probabilities, or both")
        return available
    if isinstance(attacks, str):
        attacks = (attacks,)
    unknown = [name for name in attacks if name not in ALL_ATTACKS]
    if unknown:
        raise ValueError(f"unknown membership attacks {unknown}; known: {ALL_ATTACKS}")
    missing = [name for name in attacks if name not in available]
    if missing:
        raise ValueError(
            f"attacks {missing} need outputs that were not given: {', '.join(sorted({ATTACK_OUTPUT[n] for n in missing}))}"
            + (" and reference outputs" if any(n in OFFLINE_ATTACKS for n in missing) else "")
            + (" and online reference outputs (with IN masks)" if any(n in ONLINE_ATTACKS for n in missing) else "")
            + (" and quantile thresholds" if any(n in QUANTILE_ATTACKS for n in missing) else "")
        )
    return tuple(attacks)


def _move(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def run_membership_attacks(
    member_posteriors: torch.Tensor | None,
    member_labels: torch.Tensor,
    nonmember_posteriors: torch.Tensor | None,
    nonmember_labels: torch.Tensor,
    *,
    member_log_probs: torch.Tensor | None = None,
    nonmember_log_probs: torch.Tensor | None = None,
    reference: ReferenceOutputs | None = None,
    seed: int = 0,
    mlp_epochs: int = 50,
    device: torch.device | str | None = None,
    attacks: Sequence[str] | None = None,
    min_class_samples: int = DEFAULT_MIN_CLASS_SAMPLES,
    rmia_a: float = RMIA_DEFAULT_A,
    rmia_gamma: float = RMIA_DEFAULT_GAMMA,
    lira_global_variance: bool = True,
    scored: dict[str, ScoredHalf] | None = None,
    quantile: QuantileThresholds | None = None,
) -> dict[str, dict[str, float]]:
    """Run membership inference attacks (SecurityNet Sec. 3.2 and beyond) and return metrics per attack name.

    `scored`, when given, receives each attack's per-sample scores, decisions and membership on the
    scored half (`ScoredHalf`), from which a benchmark computes bootstrap intervals of the metrics.

    The paper's attacks read the posteriors, the others the log-probabilities (`ATTACK_OUTPUT`);
    RMIA and LiRA also need `reference`. Either output may be None when no requested attack
    reads it; by default every attack the given outputs allow runs. Members/non-members are
    balanced and split with `attacker_split(seed)`; attacks learn on the training halves and are
    scored on the other halves. Each result holds auc, tpr_at_fpr_1e-2, tpr_at_fpr_1e-3,
    balanced_accuracy, best_balanced_accuracy, n_members and n_nonmembers (the last two are
    ints, counted on the scored half).
    """
    outputs = {
        POSTERIORS: (member_posteriors, nonmember_posteriors),
        LOG_PROBS: (member_log_probs, nonmember_log_probs),
    }
    given = {kind: pair for kind, pair in outputs.items() if any(t is not None for t in pair)}
    for kind, pair in given.items():
        if any(t is None for t in pair):
            raise ValueError(f"pass {kind} for both members and non-members, or for neither")
    if not given:
        raise ValueError("pass posteriors, log-probabilities, or both")
    n_classes = next(iter(given.values()))[0].shape[-1]  # type: ignore[union-attr]
    _check_labels(member_labels, n_classes, "member")
    _check_labels(nonmember_labels, n_classes, "non-member")
    for kind, (member_out, nonmember_out) in given.items():
        _check_output(member_out, kind, member_labels.numel(), n_classes, "member")  # type: ignore[arg-type]
        _check_output(nonmember_out, kind, nonmember_labels.numel(), n_classes, "non-member")  # type: ignore[arg-type]
    if reference is not None:
        _check_reference(reference, member_labels.numel(), nonmember_labels.numel(), n_classes)
    if min_class_samples < 1:
        raise ValueError("min_class_samples must be at least 1")
    if quantile is not None and (quantile.member_features.shape[0] != member_labels.numel()
                                 or quantile.nonmember_features.shape[0] != nonmember_labels.numel()):
        raise ValueError("quantile features must have one row per member and per non-member")
    names = _resolve_attacks(attacks, _available(POSTERIORS in given, LOG_PROBS in given, reference,
                                                 quantile is not None))
    first = next(iter(given.values()))[0]
    assert first is not None
    target = torch.device(device) if device is not None else first.device
    if reference is not None:
        reference = ReferenceOutputs(*(None if t is None else t.to(target) for t in reference))
    members = _Group(
        _move(member_posteriors, target), _move(member_log_probs, target), member_labels.to(target),
        reference.member_log_probs if reference is not None else None,
        reference.member_in if reference is not None else None,
        _move(quantile.member_features, target) if quantile is not None else None,
    )
    nonmembers = _Group(
        _move(nonmember_posteriors, target), _move(nonmember_log_probs, target), nonmember_labels.to(target),
        reference.nonmember_log_probs if reference is not None else None,
        reference.nonmember_in if reference is not None else None,
        _move(quantile.nonmember_features, target) if quantile is not None else None,
    )
    split = attacker_split(member_labels.numel(), nonmember_labels.numel(), seed)
    train = _make_half(members, split.member_train, nonmembers, split.nonmember_train)
    evaluation = _make_half(members, split.member_eval, nonmembers, split.nonmember_eval)

    results: dict[str, dict[str, float]] = {}
    for name in names:
        scores, decisions = _ATTACK_FUNCTIONS[name](
            train, evaluation, seed=seed, mlp_epochs=mlp_epochs, min_class_samples=min_class_samples,
            reference=reference, rmia_a=rmia_a, rmia_gamma=rmia_gamma, lira_global_variance=lira_global_variance,
            quantile=quantile,
        )
        results[name] = _metrics(scores, decisions, evaluation.is_member)
        if scored is not None:
            scored[name] = ScoredHalf(scores, decisions, evaluation.is_member)
    return results
