"""Known answers for the membership inference benchmark (SecurityNet §3.2) on real models.

Two answers the benchmark must reproduce, or fail:
- the demo catalog's overfit model (an RBF network centred on its training images) leaks:
  modified-entropy AUC > 0.8;
- "members" the model never trained on (one half of the test split against the other) leak
  nothing: every attack's AUC is 0.5 up to sampling noise.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from pytest_securitynet.attacks.membership import (
    ATTACKS,
    LOG_PROB_ATTACKS,
    OFFLINE_ATTACKS,
    ReferenceOutputs,
    run_membership_attacks,
)
from pytest_securitynet.attacks.reference_models import reference_log_probs, train_reference_models
from pytest_securitynet.attacks.common import to_float
from pytest_securitynet.harness.data import LabeledSet, take
from pytest_securitynet.harness.harness import Harness
from pytest_securitynet.harness.reference import demo_trainer, reference_set, trainer_for
from pytest_securitynet.harness.settings import Settings
from pytest_securitynet.harness.target import BlackBoxTarget

from conftest import AKAMASTER_DIR, DATA_DIR, needs_shared

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "test_membership_inference.py"
OVERFIT, CNN = "demo-digits-rbf-overfit", "demo-digits-cnn"
METRICS = {"auc", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3", "balanced_accuracy", "best_balanced_accuracy",
           "n_members", "n_nonmembers", "overfit_gap", "queries"}


pytestmark = pytest.mark.usefixtures("single_thread")


def attack(loaded, members: LabeledSet, nonmembers: LabeledSet, attacks=ATTACKS, seed: int = 0) -> dict:
    """What the benchmark does for one model: cached posteriors in, metrics per attack out."""
    cache = loaded.posteriors
    return run_membership_attacks(cache.get(members), members.labels, cache.get(nonmembers), nonmembers.labels,
                                  attacks=attacks, seed=seed, device=cache.device)


def halves_of_test_split(loaded) -> tuple[LabeledSet, LabeledSet]:
    """The test split cut in two seeded halves: "members" and non-members from one distribution."""
    n = len(loaded.data.test_labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    first, second = order[: n // 2].sort().values, order[n // 2:].sort().values
    return take(loaded.data, "test", first, "fake-members"), take(loaded.data, "test", second, "nonmembers")


def null_auc_sd(n_members: int, n_nonmembers: int) -> float:
    """Standard deviation of the AUC of a score that carries no membership signal (Mann-Whitney)."""
    return math.sqrt((n_members + n_nonmembers + 1) / (12 * n_members * n_nonmembers))


def accuracy(posteriors: torch.Tensor, labels: torch.Tensor) -> float:
    return (posteriors.argmax(dim=1).cpu() == labels).double().mean().item()


# --- the overfit model leaks --------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["mentropy-global", "mentropy-classwise"])
def test_overfit_demo_model_leaks_to_modified_entropy(harness, variant):
    loaded = harness.loaded(harness.catalog.model(OVERFIT))
    result = attack(loaded, loaded.sets["members"], loaded.sets["nonmembers"], attacks=[variant])[variant]
    assert result["n_members"] == result["n_nonmembers"] == 449  # 898 members, half scored
    assert result["auc"] > 0.8


def test_leak_follows_the_overfitting_gap(harness):
    """The paper's correlation in miniature: the model with the larger gap leaks more."""
    found = {}
    for model_id in (CNN, OVERFIT):
        loaded = harness.loaded(harness.catalog.model(model_id))
        members, nonmembers = loaded.sets["members"], loaded.sets["nonmembers"]
        gap = (accuracy(loaded.posteriors.get(members), members.labels)
               - accuracy(loaded.posteriors.get(nonmembers), nonmembers.labels))
        found[model_id] = gap, attack(loaded, members, nonmembers, attacks=["mentropy-global"])["mentropy-global"]["auc"]
    assert found[OVERFIT][0] > found[CNN][0]
    assert found[OVERFIT][1] > found[CNN][1] + 0.2


# --- members the model never saw leak nothing ----------------------------------------------------

@pytest.mark.parametrize("model_id", [OVERFIT, CNN])
def test_no_leak_between_test_halves_on_demo_models(harness, model_id):
    """Every attack is at chance when both groups come from the test split.

    The benchmark's bound, 0.5 ± 0.03, is too tight for the digits: 899 test images give 449 per
    group and 225 per group on the scored half, where a signal-free AUC has a standard deviation
    of 0.027, so ± 0.03 (1.1 sd) would fail by chance for about one attack in four. This test
    uses 4 sd computed from the sample size (± 0.11 here): it catches gross leaks (the overfit
    model's real leak reads 0.92) but not subtle ones. The ± 0.03 bound is checked on 2,500 vs
    2,500 scored CIFAR-10 images below.
    """
    loaded = harness.loaded(harness.catalog.model(model_id))
    results = attack(loaded, *halves_of_test_split(loaded))
    assert set(results) == set(ATTACKS)
    n = results["loss"]["n_members"]
    assert n == results["loss"]["n_nonmembers"] == 225
    bound = 4 * null_auc_sd(n, n)
    off = {name: round(r["auc"] - 0.5, 4) for name, r in results.items() if abs(r["auc"] - 0.5) > bound}
    assert not off, f"AUC off 0.5 by more than {bound:.3f} with no membership signal: {off}"


@pytest.fixture(scope="module")
def cifar10_jpeg_harness(cache_dir) -> Harness:
    """A CPU harness that evaluates CIFAR-10 models on the shared JPEG copy, offline."""
    settings = Settings(cache_dir=cache_dir, dataset_overrides={"cifar10": "cifar10-jpeg"}, offline=True)
    h = Harness(settings, lambda: torch.device("cpu"))
    h.files.mirrors = [AKAMASTER_DIR, DATA_DIR]
    return h


@pytest.mark.slow
@needs_shared(AKAMASTER_DIR / "resnet20-12fca82f.th", DATA_DIR / "cifar10-jpeg.tar.gz")
def test_no_leak_between_test_halves_on_resnet20(cifar10_jpeg_harness):
    """0.5 ± 0.03 for every attack with 5,000 vs 5,000 test images (2,500 each scored; sd 0.008)."""
    h = cifar10_jpeg_harness
    loaded = h.loaded(h.catalog.model("cifar10-resnet20-akamaster"))
    results = attack(loaded, *halves_of_test_split(loaded))
    assert {r["n_members"] for r in results.values()} == {r["n_nonmembers"] for r in results.values()} == {2500}
    off = {name: round(r["auc"] - 0.5, 4) for name, r in results.items() if abs(r["auc"] - 0.5) > 0.03}
    assert not off, f"AUC off 0.5 by more than 0.03 with no membership signal: {off}"


# --- one forward pass per sample ---------------------------------------------------------------

def test_attacks_on_one_model_share_one_forward_pass(harness):
    """Each benchmark test gets a fresh target, but the posteriors come from the per-model cache."""
    loaded = harness.loaded(harness.catalog.model(CNN))
    members, nonmembers = loaded.sets["members"], loaded.sets["nonmembers"]
    first = BlackBoxTarget(loaded.posteriors)
    first.posteriors(members), first.posteriors(nonmembers)
    before = loaded.posteriors.forward_samples
    for _ in ("confidence-global", "loss"):
        target = BlackBoxTarget(loaded.posteriors)
        target.posteriors(members), target.posteriors(nonmembers)
        assert target.queries == len(members) + len(nonmembers)
    assert loaded.posteriors.forward_samples == before


# --- end to end: the benchmark file through pytest ----------------------------------------------

def test_benchmark_rows_carry_the_metrics_and_the_known_answer(pytester, cache_dir, monkeypatch):
    monkeypatch.delenv("SECURITYNET_DATASET", raising=False)
    (pytester.path / "benchmarks").mkdir()
    shutil.copy(BENCHMARK, pytester.path / "benchmarks" / BENCHMARK.name)
    out = pytester.path / "mia.json"
    result = pytester.runpytest(
        "benchmarks", "-k", "demo and mentropy and not logp", "-p", "no:cacheprovider", "--securitynet-offline",
        "--securitynet-device=cpu", f"--securitynet-cache={cache_dir}", f"--securitynet-json={out}")
    result.assert_outcomes(passed=4)
    rows = {(r["model"], r["setting"]): r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {(m, s) for m in (CNN, OVERFIT) for s in ("mentropy-global", "mentropy-classwise")}
    for row in rows.values():
        assert row["benchmark"] == "membership_inference.membership_inference" and row["outcome"] == "passed"
        assert row["params"] == {"attack": row["setting"]}
        metrics = row["metrics"]
        assert METRICS <= set(metrics)
        assert metrics["n_members"] == metrics["n_nonmembers"] == 449
        assert metrics["queries"] == 2 * 898
        assert metrics["attacker_output"] == "posteriors" and metrics["explicit_members"] is False
    assert rows[OVERFIT, "mentropy-global"]["metrics"]["auc"] > 0.8
    assert rows[OVERFIT, "mentropy-global"]["metrics"]["overfit_gap"] > rows[CNN, "mentropy-global"]["metrics"]["overfit_gap"]


# --- beyond the paper: log-probabilities and reference models on the demo models ----------------

def log_probs(model, images: torch.Tensor) -> torch.Tensor:
    """The target's log-probability output: a float32 log-softmax of its logits."""
    with torch.inference_mode():
        return model(to_float(images)).float().log_softmax(dim=1)


def attack_with_references(harness, loaded, members: LabeledSet, nonmembers: LabeledSet, seed: int = 0,
                           attacks=None, **options) -> dict:
    """What the benchmark does: every attack, with the harness's K = 4 reference models for these scored samples."""
    trainer = trainer_for(loaded.entry, tuple(loaded.data.train_images.shape[1:]))
    refs = reference_set(harness.files, loaded.data, trainer, members, nonmembers, num_classes=10, k=4, seed=seed,
                         device=torch.device("cpu"), n_population=5000)
    cache = loaded.posteriors
    reference = ReferenceOutputs(
        refs.log_probs(members, cache.device, 256), refs.log_probs(nonmembers, cache.device, 256),
        torch.cat([refs.log_probs(z, cache.device, 256) for z in refs.population], dim=1),
        torch.cat([cache.get_log_probs(z) for z in refs.population]), torch.cat([z.labels for z in refs.population]),
    )
    return run_membership_attacks(
        cache.get(members), members.labels, cache.get(nonmembers), nonmembers.labels,
        member_log_probs=cache.get_log_probs(members), nonmember_log_probs=cache.get_log_probs(nonmembers),
        reference=reference, seed=seed, attacks=attacks, **options,
    )


def test_reference_attacks_beat_every_paper_attack_at_low_fpr_on_the_overfit_demo(harness):
    """RMIA and LiRA, with reference RBF networks trained like the target, against the paper's ten attacks.

    The paper's best here is `mlp-full` (TPR 0.285 at 1% FPR, 449 + 449 scored); measured with
    seed 0: RMIA 0.851 (3.0x), LiRA 0.697 (2.4x), so the 5x the issue asked for is not reached. Over
    seeds 0-4 RMIA stays at 2.0-5.0x the best paper attack; LiRA (one variance for all samples)
    ranges 0.19-2.4x. With the default small CNN as reference architecture instead, RMIA reaches
    only 0.038: references must resemble the target.
    """
    loaded = harness.loaded(harness.catalog.model(OVERFIT))
    results = attack_with_references(harness, loaded, loaded.sets["members"], loaded.sets["nonmembers"])
    best_paper = max(results[name]["tpr_at_fpr_1e-2"] for name in ATTACKS)
    assert best_paper > 0.2
    assert results["rmia-offline"]["tpr_at_fpr_1e-2"] >= 1.5 * best_paper
    assert results["lira-offline"]["tpr_at_fpr_1e-2"] >= 1.5 * best_paper
    assert results["rmia-offline"]["auc"] > 0.98


@pytest.mark.parametrize("model_id", [OVERFIT, pytest.param(CNN, marks=pytest.mark.slow)])
def test_new_attacks_find_nothing_between_test_halves_on_demo_models(harness, model_id):
    """Members never trained on, 225 + 225 scored: AUC within 4 sd of 0.5, TPR at 1% FPR at most 7%.

    At this size a signal-free score's TPR at 1% FPR (at most 2 of 225 non-members passed) exceeds 3%
    with probability 0.088 and 7% with probability 0.0005 (simulated, 200,000 draws), so 7% is the
    bound here; the 3% bound is checked on 2,500 + 2,500 below. Measured with seed 0: AUC 0.471-0.516,
    TPR at most 0.018 (overfit model), 0.493-0.529 and at most 0.027 (CNN; slow: trains 4 CNNs).
    """
    loaded = harness.loaded(harness.catalog.model(model_id))
    results = attack_with_references(harness, loaded, *halves_of_test_split(loaded),
                                     attacks=LOG_PROB_ATTACKS + OFFLINE_ATTACKS)
    bound = 4 * null_auc_sd(225, 225)
    for name in LOG_PROB_ATTACKS + OFFLINE_ATTACKS:
        assert abs(results[name]["auc"] - 0.5) <= bound, (name, results[name]["auc"])
        assert results[name]["tpr_at_fpr_1e-2"] <= 0.07, (name, results[name]["tpr_at_fpr_1e-2"])


def noisy_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """i.i.d. 8x8 digits: a random scikit-learn digit, shifted by up to one pixel, plus Gaussian noise (sd 40 of 255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    base = torch.from_numpy(digits.images * (255.0 / 16.0)).float()
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(base), (n,), generator=gen)
    shifts = torch.randint(-1, 2, (n, 2), generator=gen)
    images = base[pick] + 40 * torch.randn(n, 8, 8, generator=gen)
    images = torch.stack([img.roll((int(dy), int(dx)), (0, 1)) for img, (dy, dx) in zip(images, shifts)])
    return images.clamp(0, 255).round().to(torch.uint8).unsqueeze(1), torch.from_numpy(digits.target).long()[pick]


def test_new_attacks_find_nothing_with_members_never_trained_on(harness):
    """An RBF memoriser trained on 400 noisy digits; "members" and non-members are 5,000 fresh draws each.

    2,500 + 2,500 scored: AUC 0.5 +- 0.03 (sd 0.008) and TPR at 1% FPR within 0-3% for every new
    attack (measured: AUC 0.484-0.504, TPR at most 0.010). The same target's real members (its 400
    training images) leak to every new attack (measured: AUC 0.983-0.997; TPR at 1% FPR 0.955 for
    RMIA, 0.925 for LiRA, 0.285-0.80 for the threshold attacks).
    """
    train_fn = demo_trainer(harness.catalog.model(OVERFIT)).train
    train_images, train_labels = noisy_digits(400, seed=1)
    target = train_fn(train_images, train_labels, num_classes=10, seed=0, device="cpu")
    pool_images, pool_labels = noisy_digits(800, seed=2)
    refs = train_reference_models(pool_images, pool_labels, num_classes=10, seed=0, train_fn=train_fn)
    fresh_a, fresh_b = noisy_digits(5000, seed=3), noisy_digits(5000, seed=4)

    def attack(members: tuple[torch.Tensor, torch.Tensor]) -> dict:
        member_lp, nonmember_lp = log_probs(target, members[0]), log_probs(target, fresh_b[0])
        reference = ReferenceOutputs(
            reference_log_probs(refs.models, members[0]), reference_log_probs(refs.models, fresh_b[0]),
            reference_log_probs(refs.models, pool_images), log_probs(target, pool_images), pool_labels,
        )
        return run_membership_attacks(None, members[1], None, fresh_b[1], member_log_probs=member_lp,
                                      nonmember_log_probs=nonmember_lp, reference=reference)

    null = attack(fresh_a)
    assert list(null) == list(LOG_PROB_ATTACKS + OFFLINE_ATTACKS)
    for name, metrics in null.items():
        assert metrics["n_members"] == 2500
        assert abs(metrics["auc"] - 0.5) <= 0.03, (name, metrics["auc"])
        assert 0.0 <= metrics["tpr_at_fpr_1e-2"] <= 0.03, (name, metrics["tpr_at_fpr_1e-2"])
    real = attack((train_images, train_labels))
    for name, metrics in real.items():
        assert metrics["auc"] > 0.8, (name, metrics["auc"])
