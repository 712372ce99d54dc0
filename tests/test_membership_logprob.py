"""Known answers for the saturation-free membership scores (log-probability outputs)."""

from __future__ import annotations

import math

import pytest
import torch

from pytest_securitynet.attacks.logprob_scores import (
    entropy_from_log_probs,
    log_prob_terms,
    logit_confidence,
    loss_from_log_probs,
    modified_entropy_from_log_probs,
    true_class_log_terms,
)
from pytest_securitynet.attacks.membership import (
    ALL_ATTACKS,
    ATTACK_OUTPUT,
    ATTACKS,
    LOG_PROB_ATTACKS,
    LOG_PROBS,
    POSTERIORS,
    QUANTILE_ATTACKS,
    REFERENCE_ATTACKS,
    cross_entropy_loss,
    modified_entropy,
    prediction_entropy,
    run_membership_attacks,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _logits(n: int, scale: float, seed: int, n_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, n_classes, generator=gen, dtype=torch.float64), torch.randint(n_classes, (n,), generator=gen)


def test_terms_match_exact_values_from_float64_logits() -> None:
    logits, labels = _logits(500, 8.0, seed=1)
    exact_lp = logits.log_softmax(dim=1)
    # log(1 - p_j) exactly: log of the sum of the other classes' probabilities.
    exact_lc = torch.stack([
        torch.logsumexp(exact_lp[:, [k for k in range(10) if k != j]], dim=1) for j in range(10)
    ], dim=1)
    lp, lc = log_prob_terms(logits.float().log_softmax(dim=1))
    assert lp.dtype == lc.dtype == torch.float64
    # float32 log-softmax carries ~1e-6 absolute error on values of order 10.
    assert torch.allclose(lp, exact_lp, atol=1e-5, rtol=1e-6)
    assert torch.allclose(lc, exact_lc, atol=1e-5, rtol=1e-6)
    lp_y, lc_y = true_class_log_terms(logits.float().log_softmax(dim=1), labels)
    assert torch.equal(lp_y, lp.gather(1, labels[:, None]).squeeze(1))
    assert torch.equal(lc_y, lc.gather(1, labels[:, None]).squeeze(1))


def test_saturated_row_keeps_its_distance_from_one() -> None:
    logits = torch.tensor([[40.0, 0.0, 0.0], [30.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0])
    posteriors = logits.softmax(dim=1)
    assert posteriors[:, 0].tolist() == [1.0, 1.0]  # float32 cannot tell the rows apart
    assert cross_entropy_loss(posteriors, labels).tolist() == [0.0, 0.0]
    log_probs = logits.log_softmax(dim=1)
    assert log_probs[:, 0].tolist() == [0.0, 0.0]  # nor can the true class's own log-probability
    # 1 - p_y = 2 exp(-m) for margin m: loss = -log p_y = 2 exp(-m) to first order.
    loss = loss_from_log_probs(log_probs, labels)
    assert loss.tolist() == pytest.approx([2 * math.exp(-40), 2 * math.exp(-30)], rel=1e-6)
    assert logit_confidence(log_probs, labels).tolist() == pytest.approx([40 - math.log(2), 30 - math.log(2)], abs=1e-5)
    entropy = entropy_from_log_probs(log_probs)
    assert bool((entropy > 0).all()) and entropy[0] < entropy[1]
    mentropy = modified_entropy_from_log_probs(log_probs, labels)
    assert bool((mentropy > 0).all()) and mentropy[0] < mentropy[1]


def test_log_prob_scores_equal_posterior_scores_away_from_saturation() -> None:
    logits, labels = _logits(400, 2.0, seed=2)
    log_probs, posteriors = logits.float().log_softmax(dim=1), logits.float().softmax(dim=1)
    assert torch.allclose(loss_from_log_probs(log_probs, labels), cross_entropy_loss(posteriors, labels), atol=1e-5)
    assert torch.allclose(entropy_from_log_probs(log_probs), prediction_entropy(posteriors), atol=1e-5)
    assert torch.allclose(modified_entropy_from_log_probs(log_probs, labels), modified_entropy(posteriors, labels), atol=1e-5)
    p_y = posteriors.double().gather(1, labels[:, None]).squeeze(1)
    assert torch.allclose(logit_confidence(log_probs, labels), torch.log(p_y / (1 - p_y)), atol=1e-4)


def _saturated_group(n: int, margin_mean: float, margin_sd: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits whose true class leads every other by a margin ~ N(mean, sd): log-softmax of them."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(10, (n,), generator=gen)
    logits = torch.randn(n, 10, generator=gen)
    logits[torch.arange(n), labels] = logits.max(dim=1).values + margin_mean + margin_sd * torch.randn(n, generator=gen)
    return logits.log_softmax(dim=1), labels


def test_log_prob_attacks_see_what_saturated_posteriors_hide() -> None:
    """Members lead by ~32 logits, non-members by ~26: float32 posteriors read p_y = 1.0 for nearly all of both.

    The paper's confidence, loss, modified entropy and MLPs then tie (AUC 0.5, no low-FPR threshold);
    the same statistics from log-probabilities separate the groups. The posterior's entropy keeps
    its signal, because the other classes' tiny probabilities survive in float32.
    """
    member_lp, member_labels = _saturated_group(2000, 32.0, 2.0, seed=3)
    nonmember_lp, nonmember_labels = _saturated_group(2000, 26.0, 2.0, seed=4)
    member_post, nonmember_post = member_lp.exp(), nonmember_lp.exp()
    true_post = torch.cat([member_post, nonmember_post]).gather(
        1, torch.cat([member_labels, nonmember_labels])[:, None])
    assert float((true_post == 1.0).double().mean()) > 0.99
    results = run_membership_attacks(
        member_post, member_labels, nonmember_post, nonmember_labels,
        member_log_probs=member_lp, nonmember_log_probs=nonmember_lp, mlp_epochs=5,
    )
    assert list(results) == list(ATTACKS + LOG_PROB_ATTACKS)
    for name in ("confidence-global", "confidence-classwise", "loss", "mentropy-global", "mentropy-classwise",
                 "mlp-full", "mlp-top3"):
        assert abs(results[name]["auc"] - 0.5) < 0.05, name
        assert results[name]["tpr_at_fpr_1e-2"] < 0.02, name
    for name in LOG_PROB_ATTACKS:
        assert results[name]["auc"] > 0.95, name
        assert results[name]["tpr_at_fpr_1e-2"] > 0.2, name
    for name in ("loss-logp", "logit-confidence-global", "mentropy-logp-global"):
        assert results[name]["tpr_at_fpr_1e-2"] > 0.5, name


def test_each_attack_reads_one_declared_output() -> None:
    assert set(ATTACK_OUTPUT) == set(ALL_ATTACKS) == \
        set(ATTACKS) | set(LOG_PROB_ATTACKS) | set(REFERENCE_ATTACKS) | set(QUANTILE_ATTACKS)
    assert {ATTACK_OUTPUT[name] for name in ATTACKS} == {POSTERIORS}
    assert {ATTACK_OUTPUT[name] for name in LOG_PROB_ATTACKS + REFERENCE_ATTACKS + QUANTILE_ATTACKS} == {LOG_PROBS}
    assert len(set(ALL_ATTACKS)) == len(ALL_ATTACKS)
    for name in ALL_ATTACKS:
        assert name == name.lower() and " " not in name and "@" not in name


def test_log_probs_alone_run_the_log_prob_attacks_and_refuse_the_others() -> None:
    member_lp, member_labels = _saturated_group(200, 5.0, 1.0, seed=5)
    nonmember_lp, nonmember_labels = _saturated_group(200, 4.0, 1.0, seed=6)
    results = run_membership_attacks(None, member_labels, None, nonmember_labels,
                                     member_log_probs=member_lp, nonmember_log_probs=nonmember_lp)
    assert list(results) == list(LOG_PROB_ATTACKS)
    with pytest.raises(ValueError, match="posteriors"):
        run_membership_attacks(None, member_labels, None, nonmember_labels, attacks=["loss"],
                               member_log_probs=member_lp, nonmember_log_probs=nonmember_lp)
    with pytest.raises(ValueError, match="reference"):
        run_membership_attacks(None, member_labels, None, nonmember_labels, attacks=["rmia-offline"],
                               member_log_probs=member_lp, nonmember_log_probs=nonmember_lp)
    with pytest.raises(ValueError, match="both"):
        run_membership_attacks(None, member_labels, None, nonmember_labels, member_log_probs=member_lp)
    with pytest.raises(ValueError, match="log_softmax"):  # logits passed where log-probs belong
        run_membership_attacks(None, member_labels, None, nonmember_labels,
                               member_log_probs=member_lp + 10, nonmember_log_probs=nonmember_lp)


def test_posteriors_and_log_probs_of_one_model_agree_where_nothing_saturates() -> None:
    member_lp, member_labels = _saturated_group(600, 3.0, 1.0, seed=7)
    nonmember_lp, nonmember_labels = _saturated_group(600, 2.0, 1.0, seed=8)
    results = run_membership_attacks(
        member_lp.exp(), member_labels, nonmember_lp.exp(), nonmember_labels,
        member_log_probs=member_lp, nonmember_log_probs=nonmember_lp, mlp_epochs=1,
    )
    for paper, new in (("loss", "loss-logp"), ("confidence-global", "logit-confidence-global"),
                       ("entropy-global", "entropy-logp-global"), ("mentropy-classwise", "mentropy-logp-classwise")):
        assert results[new]["auc"] == pytest.approx(results[paper]["auc"], abs=1e-3), new
