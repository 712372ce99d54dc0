"""Known answers for RMIA and LiRA (offline), on synthetic outputs where the right answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from pytest_securitynet.attacks.membership import (
    ATTACKS,
    LOG_PROB_ATTACKS,
    OFFLINE_ATTACKS,
    ReferenceOutputs,
    attacker_split,
    run_membership_attacks,
)
from pytest_securitynet.attacks.membership_reference import (
    lira_offline_scores,
    log_pr_offline,
    rmia_offline_scores,
)

pytestmark = pytest.mark.usefixtures("single_thread")

K = 4
N_CLASSES = 10


def log_probs_with_confidence(phi: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """float32 log-probabilities [..., N, C] whose logit-scaled true-class confidence is exactly `phi` [..., N]."""
    logits = torch.zeros(*phi.shape, N_CLASSES, dtype=torch.float64)
    index = labels.view(*([1] * (phi.dim() - 1)), -1, 1).expand(*phi.shape, 1)
    # True class at phi + log(C - 1), the C - 1 others at 0: log p_y - log(1 - p_y) = phi.
    logits.scatter_(-1, index, (phi + math.log(N_CLASSES - 1)).unsqueeze(-1))
    return logits.log_softmax(dim=-1).float()


class World:
    """Gaussian difficulty model (LiRA's own assumption) with per-sample difficulty d ~ N(0, 3^2).

    Every model's logit-scaled confidence on x is d_x + N(0, 1), plus `shift` where the model
    trained on x. Reference models never trained on the attacker's members or non-members; each
    population sample z is IN for half of them; the target trained on its members only.
    """

    def __init__(self, n: int, n_z: int, shift: float, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.member_labels, member_ref, member_target = self._group(n, gen)
        self.nonmember_labels, nonmember_ref, nonmember_target = self._group(n, gen)
        self.population_labels, z_ref, z_target = self._group(n_z, gen)
        z_in = torch.argsort(torch.rand(n_z, K, generator=gen), dim=1).argsort(dim=1).T < K // 2
        z_ref = z_ref + 3.0 * z_in
        self.member_log_probs = log_probs_with_confidence(member_target + shift, self.member_labels)
        self.nonmember_log_probs = log_probs_with_confidence(nonmember_target, self.nonmember_labels)
        self.reference = ReferenceOutputs(
            log_probs_with_confidence(member_ref, self.member_labels),
            log_probs_with_confidence(nonmember_ref, self.nonmember_labels),
            log_probs_with_confidence(z_ref, self.population_labels),
            log_probs_with_confidence(z_target, self.population_labels),
            self.population_labels,
        )

    @staticmethod
    def _group(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = torch.randint(N_CLASSES, (n,), generator=gen)
        difficulty = 3.0 * torch.randn(n, generator=gen, dtype=torch.float64)
        reference = difficulty + torch.randn(K, n, generator=gen, dtype=torch.float64)
        target = difficulty + torch.randn(n, generator=gen, dtype=torch.float64)
        return labels, reference, target

    def attack(self, **kwargs) -> dict[str, dict[str, float]]:
        return run_membership_attacks(
            self.member_log_probs.exp(), self.member_labels, self.nonmember_log_probs.exp(), self.nonmember_labels,
            member_log_probs=self.member_log_probs, nonmember_log_probs=self.nonmember_log_probs,
            reference=self.reference, mlp_epochs=10, **kwargs,
        )


@pytest.fixture(scope="module")
def leaking_world() -> dict[str, dict[str, float]]:
    return World(5000, 2000, shift=3.0, seed=0).attack()


def normal_sf(x: float) -> float:
    return 0.5 * math.erfc(x / math.sqrt(2))


def test_lira_reaches_its_analytic_tpr_where_the_paper_attacks_cannot(leaking_world):
    """Members' confidence is 3 above their own difficulty, which varies with sd 3 across samples.

    Analytic TPR at 1% FPR, 2,500 + 2,500 scored: the loss threshold sees d + noise, N(0, 10) against
    N(3, 10): 1 - Phi(2.326 - 3 / sqrt(10)) = 0.084. LiRA subtracts the reference mean (4 models),
    leaving N(0, 1.25) against N(3, 1.25): 1 - Phi(2.326 - 3 / sqrt(1.25)) = 0.64, 7.6 times more.
    """
    loss_expected = normal_sf(2.326 - 3 / math.sqrt(10))
    lira_expected = normal_sf(2.326 - 3 / math.sqrt(1.25))
    assert loss_expected == pytest.approx(0.084, abs=1e-3) and lira_expected == pytest.approx(0.64, abs=1e-2)
    results = leaking_world
    assert set(results) == set(ATTACKS + LOG_PROB_ATTACKS + OFFLINE_ATTACKS)
    assert results["loss"]["tpr_at_fpr_1e-2"] == pytest.approx(loss_expected, abs=0.03)
    assert results["lira-offline"]["tpr_at_fpr_1e-2"] == pytest.approx(lira_expected, abs=0.06)
    best_paper = max(results[name]["tpr_at_fpr_1e-2"] for name in ATTACKS)
    assert results["lira-offline"]["tpr_at_fpr_1e-2"] >= 5 * best_paper


def test_rmia_beats_every_paper_attack(leaking_world):
    """RMIA works on probabilities, not on LiRA's Gaussian logit scale, so it has no closed form here.

    Measured with this seed: TPR at 1% FPR 0.268 against the best paper attack's 0.077 (`loss`),
    AUC 0.853 against 0.742.
    """
    results = leaking_world
    best_tpr = max(results[name]["tpr_at_fpr_1e-2"] for name in ATTACKS)
    best_auc = max(results[name]["auc"] for name in ATTACKS)
    assert results["rmia-offline"]["tpr_at_fpr_1e-2"] >= 3 * best_tpr
    assert results["rmia-offline"]["auc"] >= best_auc + 0.05


def test_no_signal_no_leak():
    """Members the target never trained on: 0.5 +- 0.03 (sd 0.008 at 2,500 + 2,500) and TPR at 1% FPR in [0, 3%]."""
    results = World(5000, 2000, shift=0.0, seed=1).attack(attacks=LOG_PROB_ATTACKS + OFFLINE_ATTACKS)
    for name, metrics in results.items():
        assert metrics["n_members"] == metrics["n_nonmembers"] == 2500
        assert abs(metrics["auc"] - 0.5) < 0.03, (name, metrics["auc"])
        assert 0.0 <= metrics["tpr_at_fpr_1e-2"] <= 0.03, (name, metrics["tpr_at_fpr_1e-2"])


# --- the formulas, against hand or brute-force computation ------------------------------------

def _random_log_probs(*shape: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(*shape, N_CLASSES, generator=gen)).log_softmax(dim=-1)


@pytest.mark.parametrize("gamma", [1.0, 2.0])
@pytest.mark.parametrize("a", [0.0, 0.3, 1.0])
def test_rmia_equals_the_pairwise_definition(a, gamma):
    """score(x) = mean over z of [ (p_t(x) / Pr(x)) / (p_t(z) / Pr(z)) > gamma ], in plain float64."""
    n, n_z = 60, 40
    gen = torch.Generator().manual_seed(5)
    labels, z_labels = torch.randint(N_CLASSES, (n,), generator=gen), torch.randint(N_CLASSES, (n_z,), generator=gen)
    target, reference = _random_log_probs(n, seed=6), _random_log_probs(K, n, seed=7)
    z_target, z_reference = _random_log_probs(n_z, seed=8), _random_log_probs(K, n_z, seed=9)

    def p_true(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return log_probs.double().exp().gather(-1, y.expand(*log_probs.shape[:-1])[..., None]).squeeze(-1)

    pr_x = ((1 + a) * p_true(reference, labels).mean(0) + (1 - a)) / 2
    pr_z = p_true(z_reference, z_labels).mean(0)
    ratio_x = p_true(target, labels) / pr_x
    ratio_z = p_true(z_target, z_labels) / pr_z
    expected = ((ratio_x[:, None] / ratio_z[None, :]) > gamma).double().mean(dim=1)
    got = rmia_offline_scores(target, reference, labels, z_target, z_reference, z_labels, a=a, gamma=gamma)
    assert torch.allclose(got.scores, expected, atol=1e-12)
    assert torch.equal(got.decisions, expected > 0.5)


def test_rmia_pr_offline_keeps_saturated_samples_apart():
    """Reference models sure to 1 - 1e-20 and 1 - 1e-18: 1 - Pr(x) = (1 + a) / 2 * mean(1 - p), kept exactly."""
    labels = torch.tensor([0, 0])
    logits = torch.tensor([[[46.0517, 0.0], [41.4465, 0.0]]], dtype=torch.float64)  # exp(-46.05) = 1e-20
    log_probs = logits.log_softmax(dim=-1)
    log_pr = log_pr_offline(log_probs, labels, a=0.3)
    one_minus_p = torch.exp(-logits[0, :, 0])
    assert torch.allclose(-log_pr, 0.65 * one_minus_p, rtol=1e-9)
    assert log_pr[0] != log_pr[1]
    with pytest.raises(ValueError):
        log_pr_offline(log_probs, labels, a=1.5)


def test_lira_hand_computed():
    """phi of the references 1, 2, 3 (mean 2, sd 1) and 0, 0, 3 (mean 1, sd sqrt(3)); targets 4 and 0.5."""
    labels = torch.tensor([0, 0])
    ref_phi = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    target_phi = torch.tensor([4.0, 0.5], dtype=torch.float64)
    reference, target = log_probs_with_confidence(ref_phi, labels), log_probs_with_confidence(target_phi, labels)
    per_sample = lira_offline_scores(target, reference, labels, global_variance=False)
    assert per_sample.scores.tolist() == pytest.approx([2.0, -0.5 / math.sqrt(3.0)], abs=1e-5)
    pooled = lira_offline_scores(target, reference, labels, global_variance=True)
    assert pooled.scores.tolist() == pytest.approx([2.0 / math.sqrt(2.0), -0.5 / math.sqrt(2.0)], abs=1e-5)  # mean variance (1 + 3) / 2
    assert pooled.decisions.tolist() == [True, False]


def test_reference_attacks_read_only_the_scored_rows():
    """Reference outputs on the training halves (which reference models may have trained on) are never read."""
    world = World(400, 100, shift=3.0, seed=2)
    split = attacker_split(400, 400, seed=0)
    noise_m, noise_n = _random_log_probs(K, 400, seed=10), _random_log_probs(K, 400, seed=11)
    member_ref, nonmember_ref = world.reference.member_log_probs.clone(), world.reference.nonmember_log_probs.clone()
    member_ref[:, split.member_train] = noise_m[:, split.member_train]
    nonmember_ref[:, split.nonmember_train] = noise_n[:, split.nonmember_train]
    changed = World(400, 100, shift=3.0, seed=2)
    changed.reference = changed.reference._replace(member_log_probs=member_ref, nonmember_log_probs=nonmember_ref)
    assert world.attack(attacks=OFFLINE_ATTACKS) == changed.attack(attacks=OFFLINE_ATTACKS)


def test_reference_shapes_are_checked():
    world = World(100, 50, shift=1.0, seed=3)
    wrong = world.reference._replace(population_log_probs=world.reference.population_log_probs[:2])
    world.reference = wrong
    with pytest.raises(ValueError, match="population_log_probs"):
        world.attack(attacks=["rmia-offline"])
