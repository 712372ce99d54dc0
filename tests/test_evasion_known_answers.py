"""Known answers of the evasion benchmark (SecurityNet Appendix C) on the two demo models.

eps 0 changes nothing; the accuracy drop grows with eps; PGD's drop is at least FGSM's at every
eps on the same inputs; and `benchmarks/test_evasion.py` run through pytest writes one row per
(attack, eps) that agrees with the attack functions called directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pytest_securitynet.attacks.evasion import evaluate_evasion, fgsm, pgd_linf

DEMO_MODELS = ["demo-digits-cnn", "demo-digits-rbf-overfit"]
EPS = [0.01, 0.03, 0.1, 0.3]
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "test_evasion.py"

_RESULTS: dict[tuple[str, str, int], dict[float, dict[str, float]]] = {}


pytestmark = pytest.mark.usefixtures("single_thread")


def _loaded(harness, model_id: str):
    return harness.loaded(harness.catalog.model(model_id))


def _evasion(harness, model_id: str, attack: str, steps: int = 10) -> dict[float, dict[str, float]]:
    """`evaluate_evasion` on the model's whole test split at every eps, computed once per module."""
    key = (model_id, attack, steps)
    if key not in _RESULTS:
        loaded = _loaded(harness, model_id)
        test = loaded.sets["test"]
        _RESULTS[key] = evaluate_evasion(loaded.model, test.images, test.labels, [0.0, *EPS],
                                         attack=attack, steps=steps, batch_size=256, seed=0)
    return _RESULTS[key]


@pytest.mark.parametrize("model_id", DEMO_MODELS)
def test_demo_model_is_attackable(harness, model_id):
    """The known answers below are only informative if the model is accurate and the attack bites."""
    result = _evasion(harness, model_id, "fgsm")
    assert result[0.0]["clean_accuracy"] > 0.7
    assert result[0.1]["accuracy_drop"] > 0.2


@pytest.mark.parametrize("model_id", DEMO_MODELS)
def test_eps_zero_changes_nothing(harness, model_id):
    loaded = _loaded(harness, model_id)
    test = loaded.sets["test"]
    images = test.images.float() / 255
    assert torch.equal(fgsm(loaded.model, images, test.labels, 0.0), images)
    assert torch.equal(pgd_linf(loaded.model, images, test.labels, 0.0, steps=3), images)
    for attack in ("fgsm", "pgd"):
        result = _evasion(harness, model_id, attack)[0.0]
        assert result["accuracy_drop"] == 0.0
        assert result["adversarial_accuracy"] == result["clean_accuracy"]


def test_eps_zero_transfer_changes_nothing(harness):
    """Black-box by transfer: a zero-size perturbation from another model leaves accuracy as is."""
    source = _loaded(harness, "demo-digits-rbf-overfit").model
    loaded = _loaded(harness, "demo-digits-cnn")
    test = loaded.sets["test"]
    result = evaluate_evasion(loaded.model, test.images, test.labels, [0.0], source_model=source)[0.0]
    assert result["accuracy_drop"] == 0.0


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
@pytest.mark.parametrize("model_id", DEMO_MODELS)
def test_drop_grows_with_eps(harness, model_id, attack):
    result = _evasion(harness, model_id, attack)
    drops = [result[eps]["accuracy_drop"] for eps in [0.0, *EPS]]
    assert drops == sorted(drops)
    assert drops[1] < drops[-1]
    assert len({r["clean_accuracy"] for r in result.values()}) == 1


@pytest.mark.parametrize("steps", [10, pytest.param(50, marks=pytest.mark.slow)])
@pytest.mark.parametrize("model_id", DEMO_MODELS)
def test_pgd_drop_at_least_fgsm(harness, model_id, steps):
    """Same inputs, same eps: PGD (step eps/4, random start) finds at least what one FGSM step finds."""
    f = _evasion(harness, model_id, "fgsm")
    p = _evasion(harness, model_id, "pgd", steps)
    for eps in EPS:
        assert p[eps]["clean_accuracy"] == f[eps]["clean_accuracy"]
        assert p[eps]["accuracy_drop"] >= f[eps]["accuracy_drop"], eps


def test_benchmark_rows(pytester, harness, cache_dir):
    """The benchmark file end to end on the demo models: one passed row per (model, eps)."""
    pytester.makepyfile(test_evasion=BENCHMARK.read_text(encoding="utf-8"))
    out = pytester.path / "results.json"
    run = pytester.runpytest("-p", "no:cacheprovider", "-k", "demo and fgsm-whitebox",
                             "--securitynet-json", str(out), "--securitynet-cache", str(cache_dir),
                             "--securitynet-device", "cpu", "--securitynet-offline")
    run.assert_outcomes(passed=2 * 3)
    rows = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert {(r["model"], r["setting"]) for r in rows} == {
        (m, f"fgsm-whitebox-eps{eps}") for m in DEMO_MODELS for eps in (0.01, 0.03, 0.1)}
    for row in rows:
        m = row["metrics"]
        assert row["outcome"] == "passed"
        assert row["benchmark"] == "evasion.accuracy_drop"
        assert row["params"] == {"attack": "fgsm-whitebox", "eps": m["eps"]}
        assert (m["attack"], m["steps"], m["source"]) == ("fgsm", 1, "target")
        assert m["accuracy_drop"] == pytest.approx(m["clean_accuracy"] - m["adversarial_accuracy"])
        direct = _evasion(harness, row["model"], "fgsm")[m["eps"]]
        assert m["n_test"] == len(_loaded(harness, row["model"]).sets["test"])
        for name in ("clean_accuracy", "adversarial_accuracy", "accuracy_drop"):
            assert m[name] == pytest.approx(direct[name], abs=1.0 / m["n_test"])
    for model_id in DEMO_MODELS:
        drops = sorted((r["metrics"]["eps"], r["metrics"]["accuracy_drop"]) for r in rows if r["model"] == model_id)
        assert [d for _, d in drops] == sorted(d for _, d in drops)
