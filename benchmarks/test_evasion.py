"""Evasion (SecurityNet Appendix C): accuracy drop on the target's test set under L-inf attacks.

Paper settings: untargeted FGSM at eps 0.01, 0.03 and 0.1 on [0, 1] images, white-box on the
target, and black-box by transfer from an auxiliary ResNet-18 trained on the same data. Beyond the
paper: white-box PGD with 10 and 50 steps (step eps/4, random start), because one FGSM step
underestimates how far large models can be pushed. One test per (attack, eps) gives one row each,
e.g. setting `fgsm-transfer-eps0.03`; `-k "fgsm and eps0.1"` picks a slice.

The transfer source is trained on the true labels of the attacker's `auxiliary` set (a seeded 50%
of the training split) with the stealing trainer, so it never queries the target; it depends only
on the data and recipe, is trained once per worker (`SURROGATES`) and serves every eps and every
model evaluated on that data. Its architecture and epochs follow the stealing rule
(`pytest_securitynet.harness.budget_rules`): the paper's ResNet-18 and 30 epochs, a small CNN for 20
epochs on small data (<= 16 px, <= 20,000 training images, e.g. the demo digits); the `evasion`
budget overrides them (`--securitynet-budget evasion.source_epochs=1` for a quick CPU look).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import pytest
import torch

from pytest_securitynet.attacks.evasion import run_evasion
from pytest_securitynet.attacks.stealing import evaluate_surrogate
from pytest_securitynet.attacks.surrogate_cache import SurrogateCache, SurrogateRecipe
from pytest_securitynet.results.spec import BenchmarkSpec, Metric
from pytest_securitynet.harness.budget_rules import SurrogatePlan, surrogate_choices, surrogate_plan
from pytest_securitynet.harness.settings import budget, budget_field

EPS = (0.01, 0.03, 0.1)


@budget("evasion")
@dataclass(frozen=True)
class Budget:
    """The transfer source; derived per model when left at 0 / "auto" (module docstring). Rows record it."""

    source_epochs: int = 0  # 0: 30 (the stealing default, SecurityNet §3.1), 20 on small data
    source: str = budget_field("auto", choices=surrogate_choices)  # auto: ResNet-18 (Appendix C), a small CNN on small data


@dataclass(frozen=True)
class Setting:
    attack: str  # "fgsm" or "pgd", as evaluate_evasion names them
    steps: int = 1
    transfer: bool = False


SETTINGS = {
    "fgsm-whitebox": Setting("fgsm"),
    "fgsm-transfer": Setting("fgsm", transfer=True),
    "pgd10": Setting("pgd", steps=10),
    "pgd50": Setting("pgd", steps=50),
}

SPEC = BenchmarkSpec(
    id="evasion.accuracy_drop", title="Evasion", section="evasion", short="evasion", position=50,
    settings=tuple(f"{attack}-eps{eps}" for attack in SETTINGS for eps in EPS),
    metrics=(Metric("accuracy_drop", higher_is_better=True),),
    highlights=("fgsm-whitebox-eps0.03 accuracy_drop", "fgsm-transfer-eps0.03 accuracy_drop"),
)

SURROGATES = SurrogateCache()
"""Trained transfer sources of this worker, keyed by the data they were trained on and the recipe."""


def auxiliary_key(auxiliary) -> tuple:
    """What makes two auxiliary sets the same training data: dataset, split and the sample indices."""
    digest = hashlib.sha256(auxiliary.indices.numpy().tobytes()).hexdigest()[:16]
    return (auxiliary.dataset_id, auxiliary.split, digest, "true-labels")


def transfer_source(auxiliary, num_classes: int, topic: str, plan: SurrogatePlan, device: torch.device, seed: int,
                    progress=None):
    """The auxiliary surrogate (Appendix C: ResNet-18) trained on `auxiliary`'s true labels, cached per data."""
    recipe = SurrogateRecipe(**plan.recipe_kwargs(), label_only=True, hflip="digit" not in topic, seed=seed)
    return SURROGATES.get_or_train(auxiliary_key(auxiliary), recipe, auxiliary.images, auxiliary.labels,
                                   num_classes=num_classes, device=device, progress=progress)


@pytest.mark.parametrize("eps", [pytest.param(e, id=f"eps{e}") for e in EPS])
@pytest.mark.parametrize("attack", list(SETTINGS))
def test_accuracy_drop(target_model, test_set, auxiliary, image_data, catalog_entry, securitynet, device, seed,
                       record, progress, intervals, attack, eps):
    setting = SETTINGS[attack]
    source, extra, phases = None, {"source": "target"}, {}
    if setting.transfer:
        start = time.perf_counter()
        budget = securitynet.settings.budget(Budget)
        plan = surrogate_plan(tuple(test_set.images.shape[1:]), len(image_data.train_labels),
                              surrogate=budget.source, epochs=budget.source_epochs)
        progress(f"transfer source: a {plan.surrogate} on {len(auxiliary)} labelled images (once per data set)",
                 total=plan.epochs, unit="epoch")
        source, stats, cached = transfer_source(auxiliary, catalog_entry.annotations["num_classes"],
                                                catalog_entry.annotations.get("topic_category", ""), plan, device,
                                                seed, progress=progress.step)
        phases["training"] = 0.0 if cached else stats.train_time_s
        quality = evaluate_surrogate(source, target_model, test_set.images, test_set.labels, device=device)
        phases["setup"] = time.perf_counter() - start - phases["training"]
        extra = {"source": f"{plan.surrogate}-surrogate", "source_labels": "true", "source_epochs": stats.epochs,
                 "source_train_size": stats.n_samples, "source_train_time_s": stats.train_time_s,
                 "source_cached": cached, "source_clean_accuracy": quality["attack_accuracy"],
                 "source_agreement": quality["agreement"], "source_train_tflop_per_s": stats.tflop_per_s,
                 "scale": plan.scale}
    progress(f"{attack} at eps {eps} on {len(test_set)} images")
    start = time.perf_counter()
    # batch_size=None: the attack sizes its own batches (large on a GPU), independent of inference.
    outcome = run_evasion(target_model, test_set.images, test_set.labels, [eps], attack=setting.attack,
                          steps=setting.steps, source_model=source, device=device, seed=seed, batch_size=None)
    clean, adversarial = outcome.clean_correct, outcome.adversarial_correct[0]
    result = {"clean_accuracy": intervals.mean(clean), "adversarial_accuracy": intervals.mean(adversarial),
              "accuracy_drop": intervals.mean(clean.double() - adversarial.double())}  # paired, per image
    phases.update(outcome.phases)
    record(**result, eps=eps, attack=setting.attack, steps=setting.steps,
           step_size=eps / 4 if setting.attack == "pgd" else eps, random_start=setting.attack == "pgd",
           attack_time_s=time.perf_counter() - start, n_test=len(test_set), phases=phases,
           attack_tflop_per_s=outcome.tflop_per_s, amp=outcome.amp,
           **extra)
    assert 0.0 <= result["adversarial_accuracy"].value <= 1.0
    assert 0.0 <= result["clean_accuracy"].value <= 1.0


# --- AutoAttack: robust accuracy as RobustBench measures it (docs/evasion.md, "AutoAttack") ---------

AUTOATTACK = {
    "autoattack-linf-1of255": ("Linf", 1 / 255),
    "autoattack-linf-2of255": ("Linf", 2 / 255),
    "autoattack-robustbench-linf": ("Linf", None),  # None: RobustBench's radius for the model's dataset
    "autoattack-robustbench-l2": ("L2", None),
}
"""Small L-inf radii (informative on standard models, which fall to 0 at 8/255) and RobustBench's leaderboards."""
AUTOATTACK_GPU_POINTS, AUTOATTACK_CPU_POINTS = 10_000, 100


@budget("autoattack")
@dataclass(frozen=True)
class AutoAttackBudget:
    """How many test points AutoAttack evaluates: the first ones of the test set (rows record it)."""

    points: int = 0  # 0: 10,000 (RobustBench's) on a GPU, 100 on a CPU


AUTOATTACK_SPEC = BenchmarkSpec(
    id="evasion.autoattack", title="AutoAttack robust accuracy", short="autoattack", position=55,
    settings=tuple(AUTOATTACK), main_setting="autoattack-linf-1of255",
    metrics=(Metric("robust_accuracy", label="robust accuracy", higher_is_better=True),
             Metric("clean_accuracy", label="clean accuracy", higher_is_better=True)),
    group_by=("setting",),
)
SPECS = (AUTOATTACK_SPEC,)


def autoattack_points(requested: int, device: torch.device) -> int:
    """The budget's points, or its default for the device (AutoAttack on a CPU is slow)."""
    if requested > 0:
        return requested
    return AUTOATTACK_GPU_POINTS if device.type == "cuda" else AUTOATTACK_CPU_POINTS


@pytest.mark.parametrize("setting", list(AUTOATTACK))
def test_autoattack(target_model, test_set, catalog_entry, securitynet, device, seed, record, progress, intervals,
                    setting):
    pytest.importorskip("pyautoattack", reason="AutoAttack needs pyautoattack: pip install 'pytest-securitynet[autoattack]'")
    from pytest_securitynet.attacks.autoattack import robustbench_radius, run_autoattack

    norm, eps = AUTOATTACK[setting]
    if eps is None:
        eps = robustbench_radius(catalog_entry.dataset, norm)
        if eps is None:
            pytest.skip(f"RobustBench has no {norm} leaderboard for dataset {catalog_entry.dataset!r}")
    requested = autoattack_points(securitynet.settings.budget(AutoAttackBudget).points, device)
    n = min(requested, len(test_set))
    start = time.perf_counter()
    outcome = run_autoattack(target_model, test_set.images[:n], test_set.labels[:n], norm=norm, eps=eps,
                             num_classes=catalog_entry.annotations.get("num_classes"), seed=seed, device=device,
                             progress=progress)
    per_attack = {f"robust_accuracy_{a.replace('-', '_')}": acc for a, acc in outcome.robust_accuracy_after.items()}
    record(norm=norm, eps=eps, eps_255=eps * 255 if norm == "Linf" else None, attack="autoattack-standard",
           attacks=outcome.attacks, clean_accuracy=intervals.mean(outcome.clean.double()),
           robust_accuracy=intervals.mean(outcome.robust.double()),
           accuracy_drop=intervals.mean(outcome.clean.double() - outcome.robust.double()), **per_attack,
           robust_accuracy_after=outcome.robust_accuracy_after, flipped=outcome.flipped,
           time_per_attack_s=outcome.attack_time_s, attack_time_s=time.perf_counter() - start,
           n_points=n, points_budget=requested, n_test=len(test_set), max_perturbation=outcome.max_perturbation,
           unreliable=outcome.unreliable, unreliable_reasons=outcome.unreliable_reasons,
           implementation=f"pyautoattack {outcome.package_version}", batch_size=outcome.batch_size)
    assert outcome.max_perturbation <= eps + 1e-5
    assert 0.0 <= outcome.robust_accuracy <= outcome.clean_accuracy <= 1.0
