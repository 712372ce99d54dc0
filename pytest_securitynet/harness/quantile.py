"""Inputs of the quantile-regression attack: one backbone per dataset (cached), one small head per target.

The backbone is a reference set of one model (`reference.reference_set` with K = 1, the same
recipe as the reference models, so it resembles the target too) trained on a random half of the
offline pool: it never sees a scored sample, is trained once per dataset and recipe, and is cached
in memory and on disk like the reference models. The head is fitted per target on the public
non-members: test-split samples of the pool that the backbone did not train on (so their features
look like the scored samples'), each costing the target one query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from pytest_securitynet.attacks.logprob_scores import logit_confidence
from pytest_securitynet.attacks.membership import QuantileThresholds
from pytest_securitynet.attacks.membership_quantile import QUANTILE_ALPHA, fit_quantile_regressor, quantile_features
from pytest_securitynet.harness.data import LabeledSet, take
from pytest_securitynet.harness.reference import ReferenceSet, Trainer, reference_set
from pytest_securitynet.zoo.datasets import ImageData
from pytest_securitynet.zoo.store import FileStore


@dataclass
class QuantileInputs:
    thresholds: QuantileThresholds
    info: dict[str, Any]
    """What a row records: the backbone's recipe, source and accuracy, the public set's size, the fit's time."""


def quantile_backbone(store: FileStore, data: ImageData, trainer: Trainer, members: LabeledSet,
                      nonmembers: LabeledSet, *, num_classes: int, seed: int, device: torch.device,
                      max_pool: int = 0) -> ReferenceSet:
    """The dataset's backbone: one model on a random half of the pool of samples the attacks do not score."""
    return reference_set(store, data, trainer, members, nonmembers, num_classes=num_classes, k=1, seed=seed,
                         device=device, n_population=0, max_pool=max_pool)


def public_nonmembers(data: ImageData, backbone: ReferenceSet) -> LabeledSet:
    """Test-split pool samples the backbone never trained on: non-members of the target the head is fitted on."""
    n_train = len(backbone.pool["train"])
    unseen = ~backbone.in_pool[0, n_train:]
    return take(data, "test", backbone.pool["test"][unseen], "quantile-public")


def quantile_inputs(store: FileStore, data: ImageData, trainer: Trainer, target, members: LabeledSet,
                    nonmembers: LabeledSet, *, seed: int, device: torch.device, batch_size: int,
                    max_pool: int = 0) -> QuantileInputs:
    """Backbone (trained once per dataset, cached) and this target's head, fitted on its public scores."""
    backbone = quantile_backbone(store, data, trainer, members, nonmembers, num_classes=target.num_classes,
                                 seed=seed, device=device, max_pool=max_pool)
    public = public_nonmembers(data, backbone)
    start = time.perf_counter()

    def features(samples: LabeledSet) -> torch.Tensor:
        return quantile_features(backbone.log_probs(samples, device, batch_size)[0], samples.labels)

    public_features = features(public)
    public_scores = logit_confidence(target.log_probs(public), public.labels.to(device))
    regressor = fit_quantile_regressor(public_features, public_scores, seed=seed)
    thresholds = QuantileThresholds(regressor, features(members), features(nonmembers))
    backbone_correct = backbone.log_probs(public, device, batch_size)[0].argmax(-1) == public.labels.to(device)
    info = dict(quantile_backbone_recipe=backbone.description,
                quantile_backbone_match=backbone.description.get("match"),
                quantile_backbone_source=backbone.source, quantile_backbone_time_s=backbone.time_s,
                quantile_backbone_train_size=backbone.train_sizes[0], quantile_backbone_pool_size=backbone.pool_size,
                quantile_backbone_test_accuracy=backbone_correct.double().mean().item(),
                quantile_public_size=len(public), quantile_fit_time_s=time.perf_counter() - start,
                quantile_alpha=QUANTILE_ALPHA)
    return QuantileInputs(thresholds, info)
