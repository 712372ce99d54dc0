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

import dataclasses
from dataclasses import dataclass

import pytest
import torch

from pytest_securitynet.attacks.membership import (
    ALL_ATTACKS,
    ATTACK_OUTPUT,
    LOW_FPR_TARGETS,
    ONLINE_ATTACKS,
    QUANTILE_ATTACKS,
    POSTERIORS,
    REFERENCE_ATTACKS,
    RMIA_DEFAULT_A,
    RMIA_DEFAULT_GAMMA,
    ReferenceOutputs,
    attacker_split,
    run_membership_attacks,
)
from pytest_securitynet.attacks.reference_models import DEFAULT_K, DEFAULT_POPULATION
from pytest_securitynet.harness.quantile import quantile_inputs
from pytest_securitynet.harness.reference import (
    online_reference_set,
    reference_architecture_choices,
    reference_set,
    trainer_for,
)
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
    reference_architecture: str = budget_field("auto", choices=reference_architecture_choices)
    """`auto` (like the target: its recipe for demo models, its family where buildable, else by input size),
    `small-cnn`, `resnet18`, `wrn50_2`, `cifar-resnet20` ... `cifar-resnet110`; also the quantile backbone's."""
    reference_epochs: int = 0
    """0 keeps the recipe's epochs."""
    population: int = budget_field(DEFAULT_POPULATION, minimum=1)
    """RMIA's population samples z, drawn from the reference pool."""
    reference_pool: int = 0
    """At most this many (seeded) pool samples train the reference models; 0: the whole pool."""
    online_reference_models: int = budget_field(0, minimum=0)
    """K of the online attacks (models with a `members_file`); 0: 8 on a GPU, 4 on a CPU."""


def online_k(spec: Budget, device: torch.device) -> int:
    """The online attacks' K: the budget's, or 8 on a GPU and 4 on a CPU (each sample IN for K / 2)."""
    if spec.online_reference_models:
        return spec.online_reference_models
    return 8 if device.type == "cuda" else 4


def estimates(intervals, half) -> dict:
    """The ROC metrics and balanced accuracy of one attack on its scored half, with bootstrap intervals
    (members and non-members resampled apart; the threshold re-chosen in each resample)."""
    return {**intervals.roc(half.scores, half.is_member, LOW_FPR_TARGETS),  # auc and the TPRs, one set of resamples
            "balanced_accuracy": intervals.balanced_accuracy(half.decisions, half.is_member)}


def correct(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample: whether the top-1 class of posteriors or log-probabilities is the label."""
    return outputs.argmax(dim=-1) == labels.to(outputs.device)


def reference_outputs(securitynet, catalog_entry, image_data, target, members, nonmembers, seed, device, attack,
                      progress):
    """RMIA / LiRA inputs: the dataset's reference models (trained once, cached) on the attacker's data and z."""
    spec = securitynet.settings.budget(Budget)
    trainer = trainer_for(catalog_entry, tuple(image_data.train_images.shape[1:]),
                          architecture=spec.reference_architecture, epochs=spec.reference_epochs)
    online = attack in ONLINE_ATTACKS
    k = online_k(spec, device) if online else spec.reference_models
    progress("reference models: from memory or the cache, else trained")
    trainer = dataclasses.replace(trainer, train=progress.counted(
        trainer.train, f"training {k} reference models (once; cached for later runs)", total=k, unit="model"))
    if online:
        refs = online_reference_set(securitynet.files, image_data, trainer, members, nonmembers,
                                    num_classes=target.num_classes, k=k, seed=seed,
                                    device=device)
    else:
        refs = reference_set(securitynet.files, image_data, trainer, members, nonmembers,
                             num_classes=target.num_classes, k=k, seed=seed, device=device,
                             n_population=spec.population, max_pool=spec.reference_pool)
    progress("reference models: their outputs on the attacker's data and the population")
    batch = securitynet.settings.batch_size
    population_labels = torch.cat([z.labels for z in refs.population])
    outputs = ReferenceOutputs(
        refs.log_probs(members, device, batch), refs.log_probs(nonmembers, device, batch),
        torch.cat([refs.log_probs(z, device, batch) for z in refs.population], dim=1),
        torch.cat([target.log_probs(z) for z in refs.population]), population_labels,
        *((refs.in_pool[:, :len(members)], refs.in_pool[:, len(members):]) if online else ()),
    )
    scored = attacker_split(len(members), len(nonmembers), seed).nonmember_eval.to(device)
    held_out = outputs.nonmember_log_probs[:, scored].argmax(dim=-1) == nonmembers.labels.to(device)[scored]
    if online:  # each model's accuracy on the scored non-members it never trained on
        unseen = ~outputs.nonmember_in[:, scored.cpu()].to(device)
        accuracies = [row[mask].double().mean().item() for row, mask in zip(held_out, unseen)]
    else:
        accuracies = held_out.double().mean(dim=1).tolist()
    info = dict(reference_models=len(refs.models), reference_recipe=refs.description,
                reference_match=refs.description.get("match"), reference_mode="online" if online else "offline",
                reference_test_accuracy=sum(accuracies) / len(accuracies), reference_test_accuracies=accuracies,
                reference_train_sizes=refs.train_sizes, reference_pool_size=refs.pool_size,
                reference_source=refs.source, reference_time_s=refs.time_s,
                population_size=len(population_labels), rmia_a=None if online else RMIA_DEFAULT_A,
                rmia_gamma=RMIA_DEFAULT_GAMMA,
                lira_variance="global")
    return outputs, info


@pytest.mark.parametrize("attack", ALL_ATTACKS)
def test_membership_inference(target, members, nonmembers, record, seed, attack, securitynet, catalog_entry,
                              image_data, device, intervals, progress):
    """One attack's AUC, TPR at 1% / 0.1% FPR and balanced accuracy, beside the overfitting gap.

    `overfit_gap` is accuracy on the attacker's members minus accuracy on its non-members, from the
    output the attacker saw (a sample of the paper's train-minus-test gap).
    """
    output = ATTACK_OUTPUT[attack]
    read = target.posteriors if output == POSTERIORS else target.log_probs
    member_out, nonmember_out = read(members), read(nonmembers)
    reference, quantile, extra = None, None, {}
    if attack in ONLINE_ATTACKS and catalog_entry.members is None:
        pytest.skip("online attacks need the training members (a catalog entry with members_file); "
                    "the offline ones run on every model")
    if attack in REFERENCE_ATTACKS:
        reference, extra = reference_outputs(securitynet, catalog_entry, image_data, target, members, nonmembers,
                                             seed, device, attack, progress)
    if attack in QUANTILE_ATTACKS:
        spec = securitynet.settings.budget(Budget)
        trainer = trainer_for(catalog_entry, tuple(image_data.train_images.shape[1:]),
                              architecture=spec.reference_architecture, epochs=spec.reference_epochs)
        fitted = quantile_inputs(securitynet.files, image_data, trainer, target, members, nonmembers, seed=seed,
                                 device=device, batch_size=securitynet.settings.batch_size,
                                 max_pool=spec.reference_pool)
        quantile, extra = fitted.thresholds, fitted.info
    progress(f"{attack}: scoring members against non-members")
    posteriors = (member_out, nonmember_out) if output == POSTERIORS else (None, None)
    log_probs = (None, None) if output == POSTERIORS else (member_out, nonmember_out)
    result = run_membership_attacks(
        posteriors[0], members.labels, posteriors[1], nonmembers.labels,
        member_log_probs=log_probs[0], nonmember_log_probs=log_probs[1], reference=reference,
        attacks=[attack], seed=seed, device=target.device, scored=(scored := {}), quantile=quantile,
    )[attack]
    result |= estimates(intervals, scored[attack])
    explicit = catalog_entry.raw.get("members")
    member_correct, nonmember_correct = correct(member_out, members.labels), correct(nonmember_out, nonmembers.labels)
    record(**result, attacker_output=output, overfit_gap=intervals.difference(member_correct, nonmember_correct),
           member_accuracy=intervals.mean(member_correct), nonmember_accuracy=intervals.mean(nonmember_correct),
           members_held=len(members), nonmembers_held=len(nonmembers),
           explicit_members=explicit is not None, training_members=len(explicit) if explicit else None,
           queries=target.queries, **extra)

    held = min(len(members), len(nonmembers))
    assert target.queries == len(members) + len(nonmembers) + extra.get("population_size", 0) \
        + extra.get("quantile_public_size", 0)
    assert result["n_members"] == result["n_nonmembers"] == held - held // 2  # the scored half
    for name in ("auc", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3", "balanced_accuracy"):
        assert 0.0 <= float(result[name]) <= 1.0, name
    assert 0.5 <= result["best_balanced_accuracy"] <= 1.0
