"""Membership inference (SecurityNet §3.2): metric-based, loss, MLP and label-only attacks.

The attacker holds `members` (a seeded subset of the training split) and as many `nonmembers`
(test split) and sees full posteriors. Attacks that learn (thresholds, the MLP) learn on one
seeded half of that data and are scored on the other (`run_membership_attacks`). Each attack is
its own test id (`-k mentropy`, `-k "mlp and top3"`); all of them read the same cached
posteriors, so a model is run once per sample whatever the number of attacks selected.
"""

from __future__ import annotations

import pytest
import torch

from pytest_securitynet.attacks.membership import ATTACKS, run_membership_attacks
from pytest_securitynet.results.spec import BenchmarkSpec, Metric

# Tolerances: 0.01 against a re-run, 0.02 for TPR at a low FPR (few samples); AUC 0.03 against the
# database's numbers (other samples and seeds). See docs/regression.md.
SPEC = BenchmarkSpec(
    id="membership_inference.membership_inference", title="Membership inference", section="membership",
    short="membership", position=30, settings=ATTACKS, main_setting="mentropy-global",
    metrics=(Metric("auc", higher_is_better=True, baseline=0.01, reported=0.03),
             Metric("tpr_at_fpr_1e-2", higher_is_better=True, baseline=0.02),
             *(Metric(name, headline=False, baseline=tolerance) for name, tolerance in (
                 ("tpr_at_fpr_1e-3", 0.02), ("balanced_accuracy", 0.01), ("best_balanced_accuracy", 0.01),
                 ("member_accuracy", 0.01), ("nonmember_accuracy", 0.01), ("overfit_gap", 0.01)))),
    highlights=("auc", "mlp-top3 auc"),
)


def accuracy(posteriors: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of posteriors against labels, on the posteriors' device."""
    return (posteriors.argmax(dim=1) == labels.to(posteriors.device)).double().mean().item()


@pytest.mark.parametrize("attack", ATTACKS)
def test_membership_inference(target, members, nonmembers, record, seed, attack):
    """One attack's AUC, TPR at 1% / 0.1% FPR and balanced accuracy, beside the overfitting gap.

    `overfit_gap` is accuracy on the attacker's members minus accuracy on its non-members,
    computed from the same posteriors (a sample of the paper's train-minus-test gap).
    """
    member_post, nonmember_post = target.posteriors(members), target.posteriors(nonmembers)
    result = run_membership_attacks(
        member_post, members.labels, nonmember_post, nonmembers.labels,
        attacks=[attack], seed=seed, device=target.device,
    )[attack]
    member_acc, nonmember_acc = accuracy(member_post, members.labels), accuracy(nonmember_post, nonmembers.labels)
    record(**result, overfit_gap=member_acc - nonmember_acc, member_accuracy=member_acc,
           nonmember_accuracy=nonmember_acc, members_held=len(members), nonmembers_held=len(nonmembers),
           queries=target.queries)

    held = min(len(members), len(nonmembers))
    assert target.queries == len(members) + len(nonmembers)
    assert result["n_members"] == result["n_nonmembers"] == held - held // 2  # the scored half
    for name in ("auc", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3", "balanced_accuracy"):
        assert 0.0 <= result[name] <= 1.0, name
    assert 0.5 <= result["best_balanced_accuracy"] <= 1.0
