"""Bootstrap intervals (results/intervals.py): the values equal the attacks' own metrics, the
intervals are seeded, and a 95% interval covers the true value in 93-97% of repeated draws."""

from __future__ import annotations

import json
from math import erf, sqrt

import numpy as np
import pytest
import torch

from pytest_securitynet.attacks.membership import roc_auc, tpr_at_fpr
from pytest_securitynet.results.intervals import INTERVALS, Bootstrap, Estimate, interval_of, split_estimates


def tied_scores(seed: int, n_members: int, n_nonmembers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer scores (many ties), members shifted up."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 20, (n_members + n_nonmembers,), generator=g).double()
    scores[:n_members] += torch.randint(0, 4, (n_members,), generator=g).double()
    is_member = torch.arange(n_members + n_nonmembers) < n_members
    return scores, is_member


@pytest.mark.parametrize("seed", range(6))
def test_values_are_the_attacks_own_auc_and_tpr_at_low_fpr(seed):
    scores, is_member = tied_scores(seed, 37 + 50 * seed, 211 - 30 * seed)
    ci = Bootstrap(seed, resamples=50)
    assert ci.auc(scores, is_member).value == pytest.approx(roc_auc(scores, is_member), abs=1e-12)
    for fpr in (1e-3, 1e-2, 0.1, 0.5):
        assert ci.tpr_at_fpr(scores, is_member, fpr).value == pytest.approx(
            tpr_at_fpr(scores, is_member, fpr), abs=1e-12), fpr


def test_roc_gives_auc_and_tprs_from_one_set_of_resamples():
    scores, is_member = tied_scores(1, 300, 300)
    both = Bootstrap(0).roc(scores, is_member, {"tpr_at_fpr_1e-2": 1e-2})
    assert both["auc"] == Bootstrap(0).auc(scores, is_member)
    assert both["tpr_at_fpr_1e-2"] == Bootstrap(0).tpr_at_fpr(scores, is_member, 1e-2)
    assert both["auc"].low < both["auc"].value < both["auc"].high


def test_intervals_are_seeded_and_hold_their_value():
    correct = torch.rand(500, generator=torch.Generator().manual_seed(0)) < 0.7
    first, again, other = Bootstrap(0).mean(correct), Bootstrap(0).mean(correct), Bootstrap(1).mean(correct)
    assert first == again and (first.low, first.high) != (other.low, other.high)
    assert first.low < first.value < first.high and first.resamples == 1000 and first.n == 500
    assert 0.03 < first.high - first.low < 0.1  # about 2 x 1.96 x sqrt(0.21 / 500) = 0.08
    counted = Bootstrap(0).proportion(int(correct.sum()), 500)  # the same from a count
    assert counted.value == first.value and abs(counted.half_width - first.half_width) < 0.01
    none = Bootstrap(0, resamples=0).mean(correct)
    assert none.value == first.value and none.resamples == 0 and none.low == none.high == none.value


def test_intervals_shrink_with_the_sample_size():
    rng = np.random.default_rng(0)
    small, large = Bootstrap(0).mean(rng.random(200) < 0.8), Bootstrap(0).mean(rng.random(10_000) < 0.8)
    assert large.half_width < small.half_width / 5  # sqrt(10,000 / 200) = 7


def test_differences_and_balanced_accuracy():
    rng = np.random.default_rng(1)
    train, test = rng.random(400) < 0.95, rng.random(300) < 0.8
    gap = Bootstrap(0).difference(train, test)
    assert gap.value == pytest.approx(train.mean() - test.mean()) and gap.low < gap.value < gap.high
    assert gap.n == [400, 300]
    decisions, is_member = rng.random(600) < 0.6, np.arange(600) < 250
    ba = Bootstrap(0).balanced_accuracy(decisions, is_member)
    expected = (decisions[is_member].mean() + (~decisions[~is_member]).mean()) / 2
    assert ba.value == pytest.approx(expected) and ba.low <= ba.value <= ba.high


def test_record_keeps_the_value_and_puts_the_interval_beside_it():
    values, intervals = split_estimates({"auc": Estimate(0.6, 0.55, 0.65, resamples=1000, n=[10, 10]), "n": 10})
    assert values == {"auc": 0.6, "n": 10}
    assert intervals["auc"] == {"low": 0.55, "high": 0.65, "level": 0.95, "resamples": 1000, "n": [10, 10],
                                "method": "percentile bootstrap"}
    assert interval_of({"auc": 0.6, INTERVALS: intervals}, "auc") == (0.55, 0.65)
    assert interval_of({"auc": 0.6}, "auc") is None and interval_of({INTERVALS: {"auc": {"low": None}}}, "auc") is None
    assert split_estimates({"x": Estimate(1.0, 1.0, 1.0, resamples=0)}) == ({"x": 1.0}, {})


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least one sample"):
        Bootstrap().mean([])
    with pytest.raises(ValueError, match="members and non-members"):
        Bootstrap().auc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="between 0 and n"):
        Bootstrap().proportion(11, 10)
    with pytest.raises(ValueError, match="resamples"):
        Bootstrap(resamples=-1)


# --- coverage: nominal 95% must cover 93-97% of repeated draws -------------------------------

def coverage(draw, statistic, truth: float, repetitions: int = 1000, seed: int = 7) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for repetition in range(repetitions):
        estimate = statistic(Bootstrap(repetition, resamples=500), *draw(rng))
        hits += estimate.low <= truth <= estimate.high
    return hits / repetitions


def test_coverage_of_an_accuracy():
    covered = coverage(lambda rng: (rng.random(200) < 0.8,), Bootstrap.mean, 0.8)
    assert 0.93 <= covered <= 0.97, covered


def test_coverage_of_an_auc():
    n, shift = 100, 1.0
    truth = 0.5 * (1 + erf(shift / 2))  # P(N(shift, 1) > N(0, 1)) = Phi(shift / sqrt(2))
    members = np.arange(2 * n) < n
    covered = coverage(lambda rng: (np.concatenate([rng.normal(shift, 1, n), rng.normal(0, 1, n)]), members),
                       Bootstrap.auc, truth)
    assert 0.93 <= covered <= 0.97, covered


def test_an_interval_too_narrow_would_fail_the_coverage_check():
    # The check can fail: a 90% interval passed off as 95% covers visibly less.
    narrow = coverage(lambda rng: (rng.random(200) < 0.8,), lambda ci, x: Bootstrap(ci.seed, 500, 0.90).mean(x), 0.8)
    assert narrow < 0.93, narrow


# --- every benchmark records its headline metrics with intervals ------------------------------

NO_PER_SAMPLE_DATA = {("backdoor_detection.detection", "neural-cleanse", "score")}
"""Neural Cleanse's anomaly index is one statistic over all labels (docs/regression.md)."""


def test_every_headline_metric_of_a_demo_run_has_an_interval(pytester, cache_dir, monkeypatch, single_thread):
    import shutil
    from pathlib import Path

    from pytest_securitynet.results.spec import specs_from_block

    for name in ("SECURITYNET_DATASET", "SECURITYNET_BUDGET"):
        monkeypatch.delenv(name, raising=False)
    shutil.copytree(Path(__file__).resolve().parents[1] / "benchmarks", pytester.path / "benchmarks")
    out = pytester.path / "out.json"
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "benchmarks", f"--securitynet-cache={cache_dir}", f"--securitynet-json={out}",
        "-k", "demo-digits-cnn and (test_accuracy and not drop or mentropy-global or budget10 "
              "or fgsm-whitebox-eps0.03 or test_detection)",
        "--securitynet-budget", "stealing.epochs=2 backdoor.nc_epochs=1 backdoor.nc_samples=100 backdoor.inputs=50")
    result.assert_outcomes(passed=7)
    doc = json.loads(out.read_text())
    specs = specs_from_block(doc["benchmarks"])
    checked = 0
    for row in doc["results"]:
        metrics = row["metrics"]
        for name in specs[row["benchmark"]].headline:
            value = metrics.get(name)
            if type(value) is not float or name.endswith("_s") or \
                    (row["benchmark"], row["setting"], name) in NO_PER_SAMPLE_DATA:
                continue  # verdicts, counts and runtimes are not estimates of a rate
            assert interval_of(metrics, name) is not None, (row["benchmark"], row["setting"], name)
            assert metrics["intervals"][name]["resamples"] == 1000
            checked += 1
    assert checked >= 10  # task 3, membership 2, stealing 2, evasion 1, STRIP and NEO 1 each
