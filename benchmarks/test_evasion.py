"""Evasion (SecurityNet Appendix C): accuracy drop on the target's test set under L-inf attacks.

Paper settings: untargeted FGSM at eps 0.01, 0.03 and 0.1 on [0, 1] images, white-box on the
target, and black-box by transfer from an auxiliary ResNet-18 trained on the same data. Beyond the
paper: white-box PGD with 10 and 50 steps (step eps/4, random start), because one FGSM step
underestimates how far large models can be pushed. One test per (attack, eps) gives one row each,
e.g. setting `fgsm-transfer-eps0.03`; `-k "fgsm and eps0.1"` picks a slice.

The transfer source is trained on the true labels of the attacker's `auxiliary` set (a seeded 50%
of the training split) with the stealing loop (`steal(..., label_only=True)`), so it never queries
the target; it depends only on the data and is trained once per data set and shared by every eps
and every model evaluated on that data.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from pytest_securitynet.attacks.evasion import evaluate_evasion
from pytest_securitynet.attacks.stealing import evaluate_surrogate, steal
from pytest_securitynet.results.spec import BenchmarkSpec, Metric

EPS = (0.01, 0.03, 0.1)
SURROGATE = "resnet18"
SURROGATE_EPOCHS = 30
"""The stealing default (SecurityNet §3.1: SGD, lr 0.01, 30 epochs); rows record what was used."""


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

_SURROGATES: dict[tuple, tuple[nn.Module, dict[str, Any]]] = {}
"""Trained transfer sources, keyed by the data they were trained on (see `transfer_source`)."""


def transfer_source(auxiliary, num_classes: int, topic: str, device: torch.device, seed: int):
    """The auxiliary ResNet-18 (Appendix C) trained on `auxiliary`'s true labels, cached per data."""
    digest = hashlib.sha256(auxiliary.indices.numpy().tobytes()).hexdigest()[:16]
    key = (auxiliary.dataset_id, auxiliary.split, digest, num_classes, SURROGATE_EPOCHS, str(device), seed)
    cached = key in _SURROGATES
    if not cached:
        _SURROGATES[key] = steal(
            auxiliary.images, auxiliary.labels, num_classes=num_classes, surrogate=SURROGATE,
            epochs=SURROGATE_EPOCHS, label_only=True, hflip="digit" not in topic, device=device, seed=seed,
        )
    model, info = _SURROGATES[key]
    return model, dict(info, cached=cached)


@pytest.mark.parametrize("eps", [pytest.param(e, id=f"eps{e}") for e in EPS])
@pytest.mark.parametrize("attack", list(SETTINGS))
def test_accuracy_drop(target_model, test_set, auxiliary, catalog_entry, securitynet, device, seed, record,
                       attack, eps):
    setting = SETTINGS[attack]
    source, extra = None, {"source": "target"}
    if setting.transfer:
        source, info = transfer_source(auxiliary, catalog_entry.annotations["num_classes"],
                                       catalog_entry.annotations.get("topic_category", ""), device, seed)
        quality = evaluate_surrogate(source, target_model, test_set.images, test_set.labels, device=device,
                                     batch_size=securitynet.settings.batch_size)
        extra = {"source": f"{SURROGATE}-surrogate", "source_labels": "true", "source_epochs": info["epochs"],
                 "source_train_size": info["queries"], "source_train_time_s": info["train_time_s"],
                 "source_cached": info["cached"], "source_clean_accuracy": quality["attack_accuracy"],
                 "source_agreement": quality["agreement"]}
    start = time.perf_counter()
    result = evaluate_evasion(target_model, test_set.images, test_set.labels, [eps], attack=setting.attack,
                              steps=setting.steps, source_model=source, device=device, seed=seed,
                              batch_size=securitynet.settings.batch_size)[eps]
    record(**result, eps=eps, attack=setting.attack, steps=setting.steps,
           step_size=eps / 4 if setting.attack == "pgd" else eps, random_start=setting.attack == "pgd",
           attack_time_s=time.perf_counter() - start, n_test=len(test_set), **extra)
    assert 0.0 <= result["adversarial_accuracy"] <= 1.0
    assert 0.0 <= result["clean_accuracy"] <= 1.0
