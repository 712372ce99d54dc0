"""Membership inference (SecurityNet §3.2 and beyond): metric-based, loss, MLP, label-only, RMIA and LiRA.

The attacker holds `members` (a seeded subset of the training split, or of the training members
the catalog entry names) and as many `nonmembers` (test split). The paper's attacks see float32
posteriors; their log-probability variants and RMIA / LiRA (offline, with K reference models per
dataset) see log-probabilities, which do not saturate at 1.0. Attacks that learn (thresholds, the
MLP) learn on one seeded half of the attacker's data and are scored on the other
(`run_membership_attacks`). Each attack is its own test id (`-k mentropy`, `-k rmia`); all of
them read the same cached model outputs, so a model is run once per sample. See
docs/membership-inference.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from pytest_securitynet.attacks.membership import (
    ALL_ATTACKS,
    ATTACK_OUTPUT,
    POSTERIORS,
    REFERENCE_ATTACKS,
    RMIA_DEFAULT_A,
    RMIA_DEFAULT_GAMMA,
    ReferenceOutputs,
    attacker_split,
    run_membership_attacks,
)
from pytest_securitynet.attacks.reference_models import DEFAULT_K, DEFAULT_POPULATION
from pytest_securitynet.harness.budget_rules import surrogate_choices
from pytest_securitynet.harness.reference import reference_set, trainer_for
from pytest_securitynet.harness.settings import budget, budget_field
from pytest_securitynet.results.spec import BenchmarkSpec, Metric

# Tolerances: 0.01 against a re-run, 0.02 for TPR at a low FPR (few samples); AUC 0.03 against the
# database's numbers (other samples and seeds). See docs/regression.md.
SPEC = BenchmarkSpec(
    id="membership_inference.membership_inference", title="Membership inference", section="membership",
    short="membership", position=30, settings=ALL_ATTACKS, main_setting="mentropy-global",
    metrics=(Metric("auc", higher_is_better=True, baseline=0.01, reported=0.03),
             Metric("tpr_at_fpr_1e-2", higher_is_better=True, baseline=0.02),
             *(Metric(name, headline=False, baseline=tolerance) for name, tolerance in (
                 ("tpr_at_fpr_1e-3", 0.02), ("balanced_accuracy", 0.01), ("best_balanced_accuracy", 0.01),
                 ("member_accuracy", 0.01), ("nonmember_accuracy", 0.01), ("overfit_gap", 0.01)))),
    highlights=("auc", "mlp-top3 auc"),
)


@budget("membership")
@dataclass(frozen=True)
class Budget:
    """Reference models for RMIA and LiRA; e.g. `--securitynet-budget membership.reference_epochs=5` on a CPU."""

    reference_models: int = budget_field(DEFAULT_K, minimum=1)
    reference_architecture: str = budget_field("auto", choices=surrogate_choices)
    """`auto` (the target's recipe for demo models, else by input size), `small-cnn`, `resnet18`, `wrn50_2`."""
    reference_epochs: int = 0
    """0 keeps the recipe's epochs."""
    population: int = budget_field(DEFAULT_POPULATION, minimum=1)
    """RMIA's population samples z, drawn from the reference pool."""
    reference_pool: int = 0
    """At most this many (seeded) pool samples train the reference models; 0: the whole pool."""


def accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of posteriors or log-probabilities against labels, on the outputs' device."""
    return (outputs.argmax(dim=-1) == labels.to(outputs.device)).double().mean().item()


def reference_outputs(securitynet, catalog_entry, image_data, target, members, nonmembers, seed, device):
    """RMIA / LiRA inputs: the dataset's reference models (trained once, cached) on the attacker's data and z."""
    spec = securitynet.settings.budget(Budget)
    trainer = trainer_for(catalog_entry, tuple(image_data.train_images.shape[1:]),
                          architecture=spec.reference_architecture, epochs=spec.reference_epochs)
    refs = reference_set(securitynet.files, image_data, trainer, members, nonmembers,
                         num_classes=target.num_classes, k=spec.reference_models, seed=seed, device=device,
                         n_population=spec.population, max_pool=spec.reference_pool)
    batch = securitynet.settings.batch_size
    population_labels = torch.cat([z.labels for z in refs.population])
    outputs = ReferenceOutputs(
        refs.log_probs(members, device, batch), refs.log_probs(nonmembers, device, batch),
        torch.cat([refs.log_probs(z, device, batch) for z in refs.population], dim=1),
        torch.cat([target.log_probs(z) for z in refs.population]), population_labels,
    )
    scored = attacker_split(len(members), len(nonmembers), seed).nonmember_eval.to(device)
    held_out = outputs.nonmember_log_probs[:, scored].argmax(dim=-1) == nonmembers.labels.to(device)[scored]
    accuracies = held_out.double().mean(dim=1).tolist()
    info = dict(reference_models=len(refs.models), reference_recipe=refs.description,
                reference_test_accuracy=sum(accuracies) / len(accuracies), reference_test_accuracies=accuracies,
                reference_train_sizes=refs.train_sizes, reference_pool_size=refs.pool_size,
                reference_source=refs.source, reference_time_s=refs.time_s,
                population_size=len(population_labels), rmia_a=RMIA_DEFAULT_A, rmia_gamma=RMIA_DEFAULT_GAMMA,
                lira_variance="global")
    return outputs, info


@pytest.mark.parametrize("attack", ALL_ATTACKS)
def test_membership_inference(target, members, nonmembers, record, seed, attack, securitynet, catalog_entry,
                              image_data, device):
    """One attack's AUC, TPR at 1% / 0.1% FPR and balanced accuracy, beside the overfitting gap.

    `overfit_gap` is accuracy on the attacker's members minus accuracy on its non-members, from the
    output the attacker saw (a sample of the paper's train-minus-test gap).
    """
    output = ATTACK_OUTPUT[attack]
    read = target.posteriors if output == POSTERIORS else target.log_probs
    member_out, nonmember_out = read(members), read(nonmembers)
    reference, extra = None, {}
    if attack in REFERENCE_ATTACKS:
        reference, extra = reference_outputs(securitynet, catalog_entry, image_data, target, members, nonmembers,
                                             seed, device)
    posteriors = (member_out, nonmember_out) if output == POSTERIORS else (None, None)
    log_probs = (None, None) if output == POSTERIORS else (member_out, nonmember_out)
    result = run_membership_attacks(
        posteriors[0], members.labels, posteriors[1], nonmembers.labels,
        member_log_probs=log_probs[0], nonmember_log_probs=log_probs[1], reference=reference,
        attacks=[attack], seed=seed, device=target.device,
    )[attack]
    member_acc, nonmember_acc = accuracy(member_out, members.labels), accuracy(nonmember_out, nonmembers.labels)
    explicit = catalog_entry.raw.get("members")
    record(**result, attacker_output=output, overfit_gap=member_acc - nonmember_acc, member_accuracy=member_acc,
           nonmember_accuracy=nonmember_acc, members_held=len(members), nonmembers_held=len(nonmembers),
           explicit_members=explicit is not None, training_members=len(explicit) if explicit else None,
           queries=target.queries, **extra)

    held = min(len(members), len(nonmembers))
    assert target.queries == len(members) + len(nonmembers) + extra.get("population_size", 0)
    assert result["n_members"] == result["n_nonmembers"] == held - held // 2  # the scored half
    for name in ("auc", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3", "balanced_accuracy"):
        assert 0.0 <= result[name] <= 1.0, name
    assert 0.5 <= result["best_balanced_accuracy"] <= 1.0
