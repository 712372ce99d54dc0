"""Evasion (SecurityNet Appendix C): accuracy drop on the target's test set under L-inf attacks.

Paper settings: untargeted FGSM at eps 0.01, 0.03 and 0.1 on [0, 1] images, white-box on the
target, and black-box by transfer from an auxiliary ResNet-18 trained on the same data. Beyond the
paper: white-box PGD with 10 and 50 steps (step eps/4, random start), because one FGSM step
underestimates how far large models can be pushed. One test per (attack, eps) gives one row each,
e.g. setting `fgsm-transfer-eps0.03`; `-k "fgsm and eps0.1"` picks a slice.

The transfer source is trained on the true labels of the attacker's `auxiliary` set (a seeded 50%
of the training split) with the stealing loop (`steal(..., label_only=True)`), so it never queries
the target; it depends only on the data and is trained once per data set and shared by every eps
and every model evaluated on that data. Its architecture and epochs follow the stealing rule
(`pytest_securitynet.harness.scaling`): the paper's ResNet-18 and 30 epochs, a small CNN for 20
epochs on small data (<= 16 px, <= 20,000 training images, e.g. the demo digits); the `evasion`
budget overrides them (`--securitynet-budget evasion.source_epochs=1` for a quick CPU look).
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
from pytest_securitynet.harness.scaling import SurrogatePlan, surrogate_plan
from pytest_securitynet.harness.settings import budget

EPS = (0.01, 0.03, 0.1)


@budget("evasion")
@dataclass(frozen=True)
class Budget:
    """The transfer source; derived per model when left at 0 / "auto" (module docstring). Rows record it."""

    source_epochs: int = 0  # 0: 30 (the stealing default, SecurityNet §3.1), 20 on small data
    source: str = "auto"  # auto: ResNet-18 (Appendix C), a small CNN on small data


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

_SURROGATES: dict[tuple, tuple[nn.Module, dict[str, Any]]] = {}
"""Trained transfer sources, keyed by the data they were trained on (see `transfer_source`)."""


def transfer_source(auxiliary, num_classes: int, topic: str, plan: SurrogatePlan, device: torch.device, seed: int,
                    progress=None):
    """The auxiliary surrogate (Appendix C: ResNet-18) trained on `auxiliary`'s true labels, cached per data."""
    digest = hashlib.sha256(auxiliary.indices.numpy().tobytes()).hexdigest()[:16]
    key = (auxiliary.dataset_id, auxiliary.split, digest, num_classes, plan, str(device), seed)
    cached = key in _SURROGATES
    if not cached:
        _SURROGATES[key] = steal(
            auxiliary.images, auxiliary.labels, num_classes=num_classes, label_only=True,
            hflip="digit" not in topic, device=device, seed=seed, progress=progress, **plan.steal_kwargs(),
        )
    model, info = _SURROGATES[key]
    return model, dict(info, cached=cached)


@pytest.mark.parametrize("eps", [pytest.param(e, id=f"eps{e}") for e in EPS])
@pytest.mark.parametrize("attack", list(SETTINGS))
def test_accuracy_drop(target_model, test_set, auxiliary, image_data, catalog_entry, securitynet, device, seed,
                       record, progress, attack, eps):
    setting = SETTINGS[attack]
    source, extra = None, {"source": "target"}
    if setting.transfer:
        budget = securitynet.settings.budget(Budget)
        plan = surrogate_plan(tuple(test_set.images.shape[1:]), len(image_data.train_labels),
                              surrogate=budget.source, epochs=budget.source_epochs)
        progress(f"transfer source: a {plan.surrogate} on {len(auxiliary)} labelled images (once per data set)",
                 total=plan.epochs, unit="epoch")
        source, info = transfer_source(auxiliary, catalog_entry.annotations["num_classes"],
                                       catalog_entry.annotations.get("topic_category", ""), plan, device, seed,
                                       progress=progress.step)
        quality = evaluate_surrogate(source, target_model, test_set.images, test_set.labels, device=device,
                                     batch_size=securitynet.settings.batch_size)
        extra = {"source": f"{plan.surrogate}-surrogate", "source_labels": "true", "source_epochs": info["epochs"],
                 "source_train_size": info["queries"], "source_train_time_s": info["train_time_s"],
                 "source_cached": info["cached"], "source_clean_accuracy": quality["attack_accuracy"],
                 "source_agreement": quality["agreement"], "scale": plan.scale}
    progress(f"{attack} at eps {eps} on {len(test_set)} images")
    start = time.perf_counter()
    result = evaluate_evasion(target_model, test_set.images, test_set.labels, [eps], attack=setting.attack,
                              steps=setting.steps, source_model=source, device=device, seed=seed,
                              batch_size=securitynet.settings.batch_size)[eps]
    record(**result, eps=eps, attack=setting.attack, steps=setting.steps,
           step_size=eps / 4 if setting.attack == "pgd" else eps, random_start=setting.attack == "pgd",
           attack_time_s=time.perf_counter() - start, n_test=len(test_set), **extra)
    assert 0.0 <= result["adversarial_accuracy"] <= 1.0
    assert 0.0 <= result["clean_accuracy"] <= 1.0
