"""Known answers for RMIA and LiRA online: reference models trained on random halves of the held samples."""

from __future__ import annotations

import math

import pytest
import torch

from pytest_securitynet.attacks.membership import (
    ATTACKS,
    OFFLINE_ATTACKS,
    ONLINE_ATTACKS,
    ReferenceOutputs,
    run_membership_attacks,
)
from pytest_securitynet.attacks.membership_reference import lira_online_scores, rmia_online_scores

from test_membership_reference import N_CLASSES, log_probs_with_confidence, normal_sf

pytestmark = pytest.mark.usefixtures("single_thread")

K = 8


def halves(n: int, gen: torch.Generator) -> torch.Tensor:
    """[K, n] bool: each sample IN for exactly K / 2 models."""
    return torch.argsort(torch.rand(n, K, generator=gen), dim=1).argsort(dim=1).T < K // 2


class OnlineWorld:
    """LiRA's Gaussian model, online: difficulty d ~ N(0, 3^2), a model's phi(x) = d + N(0, 1) + shift if IN.

    Every held sample (members, non-members, population z) is IN for half of the K reference models;
    the target trained on its members only (`target_shift`).
    """

    def __init__(self, n: int, shift: float, target_shift: float, seed: int):
        gen = torch.Generator().manual_seed(seed)
        groups = [self._group(size, shift, gen) for size in (n, n, n // 2)]
        (self.member_labels, member_ref, member_in, member_d), (self.nonmember_labels, nonmember_ref, nonmember_in,
                                                                nonmember_d), (z_labels, z_ref, _, z_d) = groups
        noise = [torch.randn(size, generator=gen, dtype=torch.float64) for size in (n, n, n // 2)]
        self.member_log_probs = log_probs_with_confidence(member_d + noise[0] + target_shift, self.member_labels)
        self.nonmember_log_probs = log_probs_with_confidence(nonmember_d + noise[1], self.nonmember_labels)
        self.reference = ReferenceOutputs(
            log_probs_with_confidence(member_ref, self.member_labels),
            log_probs_with_confidence(nonmember_ref, self.nonmember_labels),
            log_probs_with_confidence(z_ref, z_labels), log_probs_with_confidence(z_d + noise[2], z_labels), z_labels,
            member_in, nonmember_in,
        )

    @staticmethod
    def _group(n: int, shift: float, gen: torch.Generator):
        labels = torch.randint(N_CLASSES, (n,), generator=gen)
        difficulty = 3.0 * torch.randn(n, generator=gen, dtype=torch.float64)
        inside = halves(n, gen)
        reference = difficulty + torch.randn(K, n, generator=gen, dtype=torch.float64) + shift * inside
        return labels, reference, inside, difficulty

    def attack(self, **kwargs) -> dict[str, dict[str, float]]:
        return run_membership_attacks(
            self.member_log_probs.exp(), self.member_labels, self.nonmember_log_probs.exp(), self.nonmember_labels,
            member_log_probs=self.member_log_probs, nonmember_log_probs=self.nonmember_log_probs,
            reference=self.reference, mlp_epochs=10, **kwargs,
        )


def test_online_lira_reaches_its_analytic_tpr_and_beats_every_paper_attack():
    """Members 3 above their difficulty, K = 8 (4 IN, 4 OUT), 2,500 + 2,500 scored.

    LiRA online compares phi_target with the midpoint of the IN and OUT means (variance 1 / 8 from
    the means, 1 from the target): N(-1.5, 1.125) against N(1.5, 1.125), so TPR at 1% FPR is
    1 - Phi(2.326 - 3 / sqrt(1.125)) = 0.69; the loss threshold sees N(0, 10) against N(3, 10): 0.084.
    """
    expected = normal_sf(2.326 - 3 / math.sqrt(1.125))
    assert expected == pytest.approx(0.69, abs=0.01)
    results = OnlineWorld(5000, shift=3.0, target_shift=3.0, seed=0).attack(attacks=ATTACKS + ONLINE_ATTACKS)
    best_paper = max(results[name]["tpr_at_fpr_1e-2"] for name in ATTACKS)
    assert results["lira-online"]["tpr_at_fpr_1e-2"] == pytest.approx(expected, abs=0.06)
    assert results["lira-online"]["tpr_at_fpr_1e-2"] >= 5 * best_paper
    assert results["rmia-online"]["tpr_at_fpr_1e-2"] >= 2 * best_paper
    assert results["rmia-online"]["auc"] > 0.9 and results["lira-online"]["auc"] > 0.9


def test_online_attacks_find_nothing_where_the_target_never_trained_on_its_members():
    """Target shift 0 (the references still learn their IN halves): AUC 0.5 +- 0.03, TPR at 1% FPR at most 3%."""
    results = OnlineWorld(5000, shift=3.0, target_shift=0.0, seed=1).attack(attacks=ONLINE_ATTACKS)
    for name, metrics in results.items():
        assert abs(metrics["auc"] - 0.5) < 0.03, (name, metrics["auc"])
        assert metrics["tpr_at_fpr_1e-2"] <= 0.03, (name, metrics["tpr_at_fpr_1e-2"])


def test_online_lira_hand_computed():
    """IN phi 3, 5 (mean 4) and OUT phi 0, 2 (mean 1); per-sample sd sqrt(2) both; target phi 3.

    log N(3; 4, 2) - log N(3; 1, 2) = (-(1)^2 + (2)^2) / (2 * 2) = 0.75.
    """
    labels = torch.tensor([0])
    phi = torch.tensor([[3.0], [0.0], [5.0], [2.0]], dtype=torch.float64)
    inside = torch.tensor([[True], [False], [True], [False]])
    got = lira_online_scores(log_probs_with_confidence(torch.tensor([3.0], dtype=torch.float64), labels),
                             log_probs_with_confidence(phi, labels), labels, inside, global_variance=False)
    assert got.scores.tolist() == pytest.approx([0.75], abs=1e-5) and got.decisions.tolist() == [True]
    with pytest.raises(ValueError, match="reference_in"):
        lira_online_scores(log_probs_with_confidence(torch.tensor([3.0], dtype=torch.float64), labels),
                           log_probs_with_confidence(phi, labels), labels, inside[:2])


def test_online_rmia_equals_the_pairwise_definition():
    """Pr(x) and Pr(z) are plain means of p_y over all K models; score = mean over z of [ratio(x)/ratio(z) > 1]."""
    gen = torch.Generator().manual_seed(3)
    n, n_z = 50, 30
    labels, z_labels = torch.randint(N_CLASSES, (n,), generator=gen), torch.randint(N_CLASSES, (n_z,), generator=gen)
    target, reference = (torch.randn(n, N_CLASSES, generator=gen) * 3).log_softmax(-1), \
        (torch.randn(K, n, N_CLASSES, generator=gen) * 3).log_softmax(-1)
    z_target, z_reference = (torch.randn(n_z, N_CLASSES, generator=gen) * 3).log_softmax(-1), \
        (torch.randn(K, n_z, N_CLASSES, generator=gen) * 3).log_softmax(-1)

    def p_true(log_probs, y):
        return log_probs.double().exp().gather(-1, y.expand(*log_probs.shape[:-1])[..., None]).squeeze(-1)

    ratio_x = p_true(target, labels) / p_true(reference, labels).mean(0)
    ratio_z = p_true(z_target, z_labels) / p_true(z_reference, z_labels).mean(0)
    expected = (ratio_x[:, None] / ratio_z[None, :] > 1).double().mean(dim=1)
    got = rmia_online_scores(target, reference, labels, z_target, z_reference, z_labels)
    assert torch.allclose(got.scores, expected, atol=1e-12)


def test_online_and_offline_attacks_need_their_own_kind_of_reference():
    world = OnlineWorld(100, shift=3.0, target_shift=3.0, seed=2)
    with pytest.raises(ValueError, match="reference outputs"):
        world.attack(attacks=list(OFFLINE_ATTACKS))
    offline = world.reference._replace(member_in=None, nonmember_in=None)
    world.reference = offline
    with pytest.raises(ValueError, match="online reference outputs"):
        world.attack(attacks=list(ONLINE_ATTACKS))
    world.reference = offline._replace(member_in=torch.zeros(K, 100, dtype=torch.bool))
    with pytest.raises(ValueError, match="together"):
        world.attack(attacks=list(OFFLINE_ATTACKS))
