"""Known-answer tests for the membership inference attacks (pure torch, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from pytest_securitynet.attacks.membership import (
    ATTACKS,
    attacker_split,
    cross_entropy_loss,
    modified_entropy,
    prediction_correctness,
    prediction_entropy,
    roc_auc,
    roc_curve_torch,
    run_membership_attacks,
    top_k_posteriors,
    tpr_at_fpr,
    true_class_confidence,
)

N_CLASSES = 10
# Few MLP epochs keep the suite fast; the MLP still fits these easy tasks.
FAST_EPOCHS = 5


pytestmark = pytest.mark.usefixtures("single_thread")


def _posteriors(n: int, true_class_boost: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of Gaussian logits with `true_class_boost` added to the true class."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(N_CLASSES, (n,), generator=gen)
    logits = torch.randn(n, N_CLASSES, generator=gen)
    logits[torch.arange(n), labels] += true_class_boost
    return torch.softmax(logits, dim=1), labels


def _same_distribution(n_each: int, seed: int) -> tuple[torch.Tensor, ...]:
    """One sample of Dirichlet posteriors split into 'members' and 'non-members'."""
    gen = torch.Generator().manual_seed(seed)
    alpha = torch.full((2 * n_each, N_CLASSES), 0.3)
    posteriors = torch._standard_gamma(alpha, generator=gen)
    posteriors = posteriors / posteriors.sum(dim=1, keepdim=True)
    labels = torch.randint(N_CLASSES, (2 * n_each,), generator=gen)
    return posteriors[:n_each], labels[:n_each], posteriors[n_each:], labels[n_each:]


# --------------------------------------------------------------------------
# ROC helpers.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn_with_ties(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 7, (2000,), generator=gen).to(torch.float32)  # heavy ties
    is_member = torch.rand(2000, generator=gen) < 0.4
    expected = roc_auc_score(is_member.numpy(), scores.numpy())
    assert roc_auc(scores, is_member) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_matches_sklearn_continuous() -> None:
    gen = torch.Generator().manual_seed(3)
    is_member = torch.rand(5000, generator=gen) < 0.5
    scores = torch.randn(5000, generator=gen, dtype=torch.float64) + 0.3 * is_member
    expected = roc_auc_score(is_member.numpy(), scores.numpy())
    assert roc_auc(scores, is_member) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_all_tied_is_one_half() -> None:
    assert roc_auc(torch.ones(10), torch.arange(10) < 3) == pytest.approx(0.5)


def test_roc_curve_points_hand_made() -> None:
    scores = torch.tensor([0.9, 0.8, 0.8, 0.1])
    is_member = torch.tensor([True, True, False, False])
    fpr, tpr, thresholds = roc_curve_torch(scores, is_member)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert thresholds[0] == math.inf
    assert thresholds[1:].tolist() == pytest.approx([0.9, 0.8, 0.1])


def test_tpr_at_fpr_known_answer() -> None:
    # 1,000 non-members scored 0..999, 100 members scored 995.5 - i (i = 0..99).
    # FPR <= 1% allows at most the 10 non-members 990..999, so the lowest
    # threshold is 989.5, which admits the members 995.5 .. 989.5 (7 of them):
    # TPR 7%. FPR <= 0.1% allows only the non-member 999, which is above every
    # member: TPR 0.
    nonmembers = torch.arange(1000, dtype=torch.float64)
    members = 995.5 - torch.arange(100, dtype=torch.float64)
    scores = torch.cat([members, nonmembers])
    is_member = torch.cat([torch.ones(100, dtype=torch.bool), torch.zeros(1000, dtype=torch.bool)])
    assert tpr_at_fpr(scores, is_member, 1e-2) == pytest.approx(0.07)
    assert tpr_at_fpr(scores, is_member, 1e-3) == 0.0
    assert tpr_at_fpr(scores, is_member, 1.0) == 1.0


def test_tpr_at_fpr_perfect_separation() -> None:
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    is_member = torch.tensor([True, True, True, False, False])
    assert tpr_at_fpr(scores, is_member, 0.0) == 1.0


def test_roc_rejects_single_class() -> None:
    with pytest.raises(ValueError):
        roc_auc(torch.rand(5), torch.ones(5, dtype=torch.bool))


# --------------------------------------------------------------------------
# Score functions.
# --------------------------------------------------------------------------


def test_score_functions_hand_computed() -> None:
    posteriors = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    labels = torch.tensor([0, 1])
    assert prediction_correctness(posteriors, labels).tolist() == [1.0, 0.0]
    assert true_class_confidence(posteriors, labels).tolist() == pytest.approx([0.7, 0.3])
    assert cross_entropy_loss(posteriors, labels).tolist() == pytest.approx([-math.log(0.7), -math.log(0.3)])
    h0 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert prediction_entropy(posteriors)[0].item() == pytest.approx(h0)
    # Song & Mittal: -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i).
    m1 = -(0.7 * math.log(0.3)) - 0.1 * math.log(0.9) - 0.6 * math.log(0.4)
    assert modified_entropy(posteriors, labels)[1].item() == pytest.approx(m1)


def test_score_functions_finite_at_zero_and_one() -> None:
    posteriors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 0])
    for values in (
        cross_entropy_loss(posteriors, labels),
        prediction_entropy(posteriors),
        modified_entropy(posteriors, labels),
    ):
        assert torch.isfinite(values).all()
    # Perfectly confident and correct is the most member-like; wrong is the least.
    assert modified_entropy(posteriors, labels)[0] < modified_entropy(posteriors, labels)[1]


def test_top3_features_are_sorted_top3() -> None:
    posteriors = torch.tensor([[0.05, 0.5, 0.1, 0.3, 0.05], [0.2, 0.1, 0.15, 0.25, 0.3]])
    expected = torch.tensor([[0.5, 0.3, 0.1], [0.3, 0.25, 0.2]])
    assert torch.equal(top_k_posteriors(posteriors), expected)
    assert top_k_posteriors(posteriors[:, :2]).shape == (2, 2)


def test_mlp_top3_is_invariant_to_class_order() -> None:
    # Sorted top-3 features do not change when each row's classes are
    # shuffled, so neither may the mlp-top3 result (mlp-full would change).
    members = _posteriors(400, 3.0, seed=10)
    nonmembers = _posteriors(400, 1.0, seed=11)
    gen = torch.Generator().manual_seed(12)

    def shuffle(posteriors: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(torch.rand(posteriors.shape, generator=gen), dim=1)
        return posteriors.gather(1, order)

    kwargs = {"attacks": ["mlp-top3", "mlp-full"], "mlp_epochs": FAST_EPOCHS}
    plain = run_membership_attacks(*members, *nonmembers, **kwargs)
    shuffled = run_membership_attacks(shuffle(members[0]), members[1], shuffle(nonmembers[0]), nonmembers[1], **kwargs)
    assert plain["mlp-top3"] == shuffled["mlp-top3"]
    assert plain["mlp-full"] != shuffled["mlp-full"]


# --------------------------------------------------------------------------
# Known answers for the full attack suite.
# --------------------------------------------------------------------------


def test_leaking_posteriors_are_detected() -> None:
    # Members get a much larger true-class logit than non-members.
    members = _posteriors(2000, 6.0, seed=20)
    nonmembers = _posteriors(2000, 1.0, seed=21)
    results = run_membership_attacks(*members, *nonmembers, mlp_epochs=FAST_EPOCHS)
    assert list(results) == list(ATTACKS)
    for name in ("mentropy-global", "mentropy-classwise", "loss", "confidence-global", "confidence-classwise"):
        assert results[name]["auc"] > 0.9, name
        assert results[name]["balanced_accuracy"] > 0.8, name
        assert results[name]["best_balanced_accuracy"] >= results[name]["balanced_accuracy"] - 1e-12, name
    for name in ("mlp-full", "mlp-top3"):
        assert results[name]["auc"] > 0.8, name
    assert results["correctness"]["auc"] > 0.6
    assert results["mentropy-global"]["tpr_at_fpr_1e-2"] > 0.1


def test_no_leak_gives_chance_auc() -> None:
    # Members and non-members are halves of one i.i.d. sample, so every
    # attack score on the held-out half is a fixed function of i.i.d. points
    # and its AUC follows the Mann-Whitney null: mean 0.5, standard deviation
    # sqrt((n1 + n2 + 1) / (12 n1 n2)) ~ 0.009 for n1 = n2 = 2,000 scored
    # samples. 0.05 is > 5 standard deviations (the seed is fixed anyway).
    results = run_membership_attacks(*_same_distribution(4000, seed=30), mlp_epochs=FAST_EPOCHS)
    for name, metrics in results.items():
        assert abs(metrics["auc"] - 0.5) < 0.05, (name, metrics["auc"])
        assert abs(metrics["balanced_accuracy"] - 0.5) < 0.05, (name, metrics["balanced_accuracy"])


def test_metric_keys_and_counts_are_half_the_input() -> None:
    members = _posteriors(600, 2.0, seed=40)
    nonmembers = _posteriors(600, 1.0, seed=41)
    results = run_membership_attacks(*members, *nonmembers, mlp_epochs=1)
    expected_keys = {
        "auc",
        "tpr_at_fpr_1e-2",
        "tpr_at_fpr_1e-3",
        "balanced_accuracy",
        "best_balanced_accuracy",
        "n_members",
        "n_nonmembers",
    }
    for metrics in results.values():
        assert set(metrics) == expected_keys
        assert metrics["n_members"] == 300
        assert metrics["n_nonmembers"] == 300


def test_unequal_groups_are_subsampled() -> None:
    members = _posteriors(1000, 2.0, seed=42)
    nonmembers = _posteriors(300, 1.0, seed=43)
    results = run_membership_attacks(*members, *nonmembers, attacks=["loss"])
    assert results["loss"]["n_members"] == results["loss"]["n_nonmembers"] == 150


def test_seeded_and_deterministic() -> None:
    members = _posteriors(500, 2.0, seed=50)
    nonmembers = _posteriors(500, 1.0, seed=51)
    first = run_membership_attacks(*members, *nonmembers, seed=7, mlp_epochs=2)
    again = run_membership_attacks(*members, *nonmembers, seed=7, mlp_epochs=2)
    other = run_membership_attacks(*members, *nonmembers, seed=8, mlp_epochs=2)
    assert first == again
    assert first["loss"]["auc"] != other["loss"]["auc"]


def test_attacker_split_is_disjoint_halves() -> None:
    split = attacker_split(100, 80, seed=3)
    assert len(split.member_train) == len(split.nonmember_train) == 40
    assert len(split.member_eval) == len(split.nonmember_eval) == 40
    members = torch.cat([split.member_train, split.member_eval])
    assert len(set(members.tolist())) == 80 and int(members.max()) < 100
    assert set(split.nonmember_train.tolist()).isdisjoint(split.nonmember_eval.tolist())
    assert torch.equal(attacker_split(100, 80, seed=3).member_eval, split.member_eval)


def test_learning_uses_only_training_half() -> None:
    # On the training half members are confident and non-members are not; on
    # the scored half the roles are swapped. Attacks that learn on the
    # training half (thresholds, MLPs) must then do far worse than chance on
    # the scored half; learning on the scored half would give >= 0.5.
    n = 1000
    confident = _posteriors(n, 6.0, seed=60)
    unsure = _posteriors(n, 0.0, seed=61)
    split = attacker_split(n, n, seed=0)
    member_post, member_labels = confident[0].clone(), confident[1].clone()
    nonmember_post, nonmember_labels = unsure[0].clone(), unsure[1].clone()
    member_post[split.member_eval] = unsure[0][split.member_eval]
    member_labels[split.member_eval] = unsure[1][split.member_eval]
    nonmember_post[split.nonmember_eval] = confident[0][split.nonmember_eval]
    nonmember_labels[split.nonmember_eval] = confident[1][split.nonmember_eval]
    results = run_membership_attacks(
        member_post, member_labels, nonmember_post, nonmember_labels, mlp_epochs=FAST_EPOCHS
    )
    for name in ("confidence-global", "mentropy-classwise", "loss", "entropy-global"):
        assert results[name]["balanced_accuracy"] < 0.2, name
    for name in ("mlp-full", "mlp-top3"):
        assert results[name]["auc"] < 0.2, name
        assert results[name]["balanced_accuracy"] < 0.2, name


def _two_class_offsets(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Class 0 is confident overall, class 1 is not; within each class members are a bit higher."""
    gen = torch.Generator().manual_seed(seed)

    def group(member: bool) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 2
        base = torch.where(labels == 0, 0.80, 0.40) + (0.10 if member else 0.0)
        p_true = base + 0.04 * torch.rand(n, generator=gen)
        posteriors = torch.stack([p_true, 1.0 - p_true], dim=1)
        posteriors[labels == 1] = posteriors[labels == 1].flip(1)
        return posteriors, labels

    return (*group(True), *group(False))


def test_classwise_thresholds_beat_global_when_classes_differ() -> None:
    # Per class, members and non-members are perfectly separated, but class 0
    # non-members (~0.82) are more confident than class 1 members (~0.52).
    data = _two_class_offsets(1000, seed=70)
    results = run_membership_attacks(*data, attacks=["confidence-global", "confidence-classwise"])
    assert results["confidence-classwise"]["balanced_accuracy"] == 1.0
    assert results["confidence-classwise"]["auc"] == 1.0
    assert results["confidence-global"]["balanced_accuracy"] < 0.8


def test_classwise_falls_back_to_global_for_small_classes() -> None:
    data = _two_class_offsets(1000, seed=71)
    attacks = ["mentropy-global", "mentropy-classwise"]
    results = run_membership_attacks(*data, attacks=attacks, min_class_samples=10_000)
    assert results["mentropy-classwise"]["balanced_accuracy"] == results["mentropy-global"]["balanced_accuracy"]


def test_subset_and_unknown_attack() -> None:
    members = _posteriors(100, 2.0, seed=80)
    nonmembers = _posteriors(100, 1.0, seed=81)
    assert list(run_membership_attacks(*members, *nonmembers, attacks=["entropy-global", "correctness"])) == [
        "entropy-global",
        "correctness",
    ]
    with pytest.raises(ValueError):
        run_membership_attacks(*members, *nonmembers, attacks=["mentropy"])


def test_rejects_bad_inputs() -> None:
    members = _posteriors(100, 2.0, seed=82)
    with pytest.raises(ValueError):
        run_membership_attacks(members[0], members[1].to(torch.int32), *members)
    with pytest.raises(ValueError):
        run_membership_attacks(members[0], members[1] + N_CLASSES, *members)
    with pytest.raises(ValueError):
        run_membership_attacks(members[0] * math.nan, members[1], *members)
    with pytest.raises(ValueError):
        run_membership_attacks(members[0][:, :5], members[1] % 5, *members)


def test_attack_names_are_parametrize_safe() -> None:
    assert len(set(ATTACKS)) == len(ATTACKS) == 10
    for name in ATTACKS:
        assert name == name.lower() and " " not in name and "@" not in name


def test_runs_under_inference_mode() -> None:
    members = _posteriors(200, 3.0, seed=90)
    nonmembers = _posteriors(200, 1.0, seed=91)
    with torch.inference_mode():
        results = run_membership_attacks(*members, *nonmembers, attacks=["mlp-top3"], mlp_epochs=1)
    assert 0.0 <= results["mlp-top3"]["auc"] <= 1.0
