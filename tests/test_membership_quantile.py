"""Quantile-regression membership inference: a known answer in the Gaussian model, and the benchmark's rows."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from pytest_securitynet.attacks.membership import ATTACKS, QuantileThresholds, run_membership_attacks
from pytest_securitynet.attacks.membership_quantile import fit_quantile_regressor, quantile_features
from pytest_securitynet.harness import reference

from test_membership_reference import N_CLASSES, log_probs_with_confidence, normal_sf

pytestmark = pytest.mark.usefixtures("single_thread")

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "test_membership_inference.py"


class QuantileWorld:
    """Difficulty d ~ N(0, 3^2) per sample; the backbone's phi is d + N(0, 1), the target's d + N(0, 1) + shift
    for its members. The head is fitted on `n_public` fresh non-members."""

    def __init__(self, n: int, n_public: int, shift: float, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.groups = [self._group(size, gen) for size in (n, n, n_public)]
        (self.member_labels, m_feat, m_target), (self.nonmember_labels, n_feat, n_target), (_, p_feat, p_target) = \
            self.groups
        self.member_log_probs = log_probs_with_confidence(m_target + shift, self.member_labels)
        self.nonmember_log_probs = log_probs_with_confidence(n_target, self.nonmember_labels)
        self.public_features, self.public_scores = p_feat, p_target
        self.regressor = fit_quantile_regressor(p_feat, p_target, seed=seed)
        self.thresholds = QuantileThresholds(self.regressor, m_feat, n_feat)

    @staticmethod
    def _group(n: int, gen: torch.Generator):
        labels = torch.randint(N_CLASSES, (n,), generator=gen)
        difficulty = 3.0 * torch.randn(n, generator=gen, dtype=torch.float64)
        backbone = log_probs_with_confidence(difficulty + torch.randn(n, generator=gen, dtype=torch.float64), labels)
        target_phi = difficulty + torch.randn(n, generator=gen, dtype=torch.float64)
        return labels, quantile_features(backbone, labels), target_phi

    def attack(self, attacks) -> dict[str, dict[str, float]]:
        return run_membership_attacks(
            self.member_log_probs.exp(), self.member_labels, self.nonmember_log_probs.exp(), self.nonmember_labels,
            member_log_probs=self.member_log_probs, nonmember_log_probs=self.nonmember_log_probs,
            quantile=self.thresholds, mlp_epochs=10, attacks=attacks)


def test_quantile_attack_reaches_its_analytic_tpr():
    """Given the backbone's phi b, d has mean 0.9 b and variance 0.9; the target's phi minus the predicted mean
    is N(0, 1.9) for non-members and N(3, 1.9) for members: TPR at 1% FPR 1 - Phi(2.326 - 3 / sqrt(1.9)) = 0.44,
    against 0.084 for the loss threshold (2,500 + 2,500 scored, the head fitted on 5,000 public samples)."""
    expected = normal_sf(2.326 - 3 / math.sqrt(1.9))
    assert expected == pytest.approx(0.44, abs=0.01)
    results = QuantileWorld(5000, 5000, shift=3.0, seed=0).attack(ATTACKS + ("quantile",))
    best_paper = max(results[name]["tpr_at_fpr_1e-2"] for name in ATTACKS)
    assert results["quantile"]["tpr_at_fpr_1e-2"] == pytest.approx(expected, abs=0.07)
    assert results["quantile"]["tpr_at_fpr_1e-2"] >= 3 * best_paper


def test_quantile_thresholds_hold_their_false_positive_rate_and_find_nothing_without_signal():
    """Members never trained on: AUC 0.5 +- 0.03, TPR at 1% FPR at most 3%; the hard decision (above the
    predicted 99% quantile) flags 1% of non-members, within sampling error (0-2.5% of 2,500)."""
    world = QuantileWorld(5000, 5000, shift=0.0, seed=1)
    metrics = world.attack(["quantile"])["quantile"]
    assert abs(metrics["auc"] - 0.5) < 0.03 and metrics["tpr_at_fpr_1e-2"] <= 0.03
    nonmember_phi = world.groups[1][2]
    _, decisions = world.regressor.membership_scores(world.thresholds.nonmember_features, nonmember_phi)
    assert 0.0 < decisions.double().mean().item() < 0.025


def test_quantile_head_is_seeded_and_checks_its_input():
    world = QuantileWorld(200, 300, shift=0.0, seed=2)
    again = fit_quantile_regressor(world.public_features, world.public_scores, seed=2)
    features = world.thresholds.member_features
    assert torch.equal(again.predict(features)[0], world.regressor.predict(features)[0])
    with pytest.raises(ValueError, match="public samples"):
        fit_quantile_regressor(world.public_features[:5], world.public_scores[:4])
    with pytest.raises(ValueError, match="quantile thresholds"):
        run_membership_attacks(None, world.member_labels, None, world.nonmember_labels,
                               member_log_probs=world.member_log_probs, nonmember_log_probs=world.nonmember_log_probs,
                               attacks=["quantile"])


def test_quantile_rows_on_the_demo_models_share_one_backbone(pytester, tmp_path, monkeypatch, cache_dir):
    """Both demo digits models with a small-CNN backbone: trained for the first, read from memory for the second;
    each row counts the public queries and records the backbone and the head's public set."""
    monkeypatch.delenv("SECURITYNET_DATASET", raising=False)
    (pytester.path / "benchmarks").mkdir()
    shutil.copy(BENCHMARK, pytester.path / "benchmarks" / BENCHMARK.name)
    reference._IN_MEMORY.clear()
    out = tmp_path / "quantile.json"
    pytester.runpytest(
        "benchmarks", "-k", "demo and quantile", "-p", "no:cacheprovider", "--securitynet-offline",
        "--securitynet-device=cpu", f"--securitynet-cache={cache_dir}", f"--securitynet-json={out}",
        "--securitynet-budget", "membership.reference_architecture=small-cnn",
        "--securitynet-budget", "membership.reference_epochs=10").assert_outcomes(passed=2)
    rows = {r["model"]: r["metrics"] for r in json.loads(out.read_text())["results"]}
    first, second = sorted((rows[m]["quantile_backbone_source"] for m in rows), key=lambda s: s == "memory")
    assert first in ("trained", "disk") and second == "memory"  # the session cache may hold it already
    for metrics in rows.values():
        assert metrics["quantile_backbone_match"] == "chosen" and metrics["quantile_backbone_pool_size"] == 899
        assert 100 < metrics["quantile_public_size"] < 450  # the unseen test half of the pool
        assert metrics["queries"] == 898 * 2 + metrics["quantile_public_size"]
        assert metrics["quantile_backbone_test_accuracy"] > 0.8
    assert rows["demo-digits-rbf-overfit"]["auc"] > 0.85 > rows["demo-digits-cnn"]["auc"]
