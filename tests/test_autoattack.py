"""AutoAttack (attacks/autoattack.py): the cascade agrees with pyautoattack's own evaluation on the
same points, RobustBench's reasons to distrust an evaluation are raised, and the benchmark setting
writes its rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("pyautoattack", reason="pip install 'pytest-securitynet[autoattack]'")

from pytest_securitynet.attacks.autoattack import (  # noqa: E402
    reference_robust_accuracy, robustbench_radius, run_autoattack,
)

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "test_evasion.py"

pytestmark = pytest.mark.usefixtures("single_thread")


def _points(harness, model_id: str, n: int):
    loaded = harness.loaded(harness.catalog.model(model_id))
    test = loaded.sets["test"]
    return loaded.model, test.images[:n], test.labels[:n]


@pytest.mark.slow
def test_cascade_equals_pyautoattack_on_the_same_points(harness):
    """Same model, points, radius and seed: the cascade's worst case is pyautoattack's robust accuracy."""
    model, images, labels = _points(harness, "demo-digits-cnn", 24)
    ours = run_autoattack(model, images, labels, norm="Linf", eps=0.05, seed=0)
    reference = reference_robust_accuracy(model, images, labels, norm="Linf", eps=0.05, seed=0)
    assert ours.robust_accuracy < ours.clean_accuracy  # the attack bites, so agreement says something
    assert abs(ours.robust_accuracy - reference) <= 0.01
    assert list(ours.robust_accuracy_after) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert ours.robust_accuracy == list(ours.robust_accuracy_after.values())[-1]
    assert sum(ours.flipped.values()) == round((ours.clean_accuracy - ours.robust_accuracy) * 24)
    assert ours.max_perturbation <= 0.05 + 1e-5
    assert not ours.unreliable, ours.unreliable_reasons


class _Quantised(nn.Module):
    """A linear classifier behind a rounding step: the input gradient is zero everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.round(x * 4).flatten(1))


class _Noisy(nn.Module):
    """A linear classifier with Gaussian noise on its input: every forward pass differs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1) + 0.1 * torch.randn_like(x.flatten(1)))


def _random_points(model: nn.Module, n: int = 16):
    torch.manual_seed(0)
    images = (torch.rand(n, 1, 8, 8) * 255).to(torch.uint8)
    with torch.no_grad():
        labels = model.fc(images.float().flatten(1) / 255).argmax(1)
    return images, labels


def test_masked_gradients_are_unreliable_and_square_beats_white_box():
    torch.manual_seed(0)
    model = _Quantised()
    images, labels = _random_points(model)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)
    result = run_autoattack(model, images, labels, eps=0.2, seed=0)
    assert result.unreliable
    assert "zero input gradients at 16 of 16 clean points" in result.unreliable_reasons
    assert any(r.startswith("Square (black-box) lowered robust accuracy") for r in result.unreliable_reasons)
    assert result.robust_accuracy_after["square"] < result.robust_accuracy_after["fab-t"]


def test_a_random_forward_pass_is_unreliable():
    torch.manual_seed(0)
    model = _Noisy()
    images, labels = _random_points(model)
    result = run_autoattack(model, images, labels, eps=0.01, seed=0)
    assert any(r.startswith("non-deterministic forward pass") for r in result.unreliable_reasons)


def test_robustbench_radii():
    assert robustbench_radius("cifar10", "Linf") == pytest.approx(8 / 255)
    assert robustbench_radius("cifar10", "L2") == 0.5
    assert robustbench_radius("cifar-100", "Linf") == pytest.approx(8 / 255)
    assert robustbench_radius("imagenet1k", "Linf") == pytest.approx(4 / 255)
    assert robustbench_radius("imagenet1k", "L2") is None
    assert robustbench_radius("digits", "Linf") is None


def test_bad_input_says_what_is_wrong():
    model = _Noisy()
    images, labels = _random_points(model, 2)
    with pytest.raises(ValueError, match="norm must be"):
        run_autoattack(model, images, labels, norm="L1")
    with pytest.raises(ValueError, match="eps must be"):
        run_autoattack(model, images, labels, eps=0.0)
    with pytest.raises(ValueError, match="uint8"):
        run_autoattack(model, images.float(), labels)


@pytest.mark.slow
def test_benchmark_rows(pytester, cache_dir):
    """The setting end to end: one row per radius with the budget's points; RobustBench's radii skip on digits."""
    pytester.makepyfile(test_evasion=BENCHMARK.read_text(encoding="utf-8"))
    out = pytester.path / "results.json"
    run = pytester.runpytest("-p", "no:cacheprovider", "-k", "demo-digits-cnn and (linf-2of255 or robustbench-linf)", "-W",
                             "error::pytest_securitynet.plugin.specs.SpecWarning", "--securitynet-json", str(out), "--securitynet-cache",
                             str(cache_dir), "--securitynet-device", "cpu", "--securitynet-offline",
                             "--securitynet-budget", "autoattack.points=8")
    run.assert_outcomes(passed=1, skipped=1)  # -W error: a selection of one of the file's benchmarks is no SpecWarning
    rows = {r["setting"]: r for r in json.loads(out.read_text(encoding="utf-8"))["results"]}
    assert rows["autoattack-robustbench-linf"]["outcome"] == "skipped"
    for setting, eps in (("autoattack-linf-2of255", 2 / 255),):
        row = rows[setting]
        m = row["metrics"]
        assert row["benchmark"] == "evasion.autoattack"
        assert (m["n_points"], m["points_budget"], m["norm"]) == (8, 8, "Linf")
        assert m["eps"] == pytest.approx(eps)
        assert m["robust_accuracy"] == m["robust_accuracy_square"] <= m["robust_accuracy_apgd_ce"] <= m["clean_accuracy"]
        assert m["unreliable"] is False and m["unreliable_reasons"] == []
        assert set(m["time_per_attack_s"]) == {"apgd-ce", "apgd-t", "fab-t", "square"}
        low, high = m["intervals"]["robust_accuracy"]["low"], m["intervals"]["robust_accuracy"]["high"]
        assert low <= m["robust_accuracy"] <= high and m["intervals"]["robust_accuracy"]["n"] == 8


# --- known answers: an adversarially trained twin, and pyautoattack's own ResNet-18 -----------------

ROBUST_DIGITS = Path(__file__).resolve().parents[1] / "examples" / "robust-digits.toml"


@pytest.fixture(scope="module")
def robust_harness(cache_dir):
    from pytest_securitynet.harness.harness import Harness
    from pytest_securitynet.harness.settings import Settings

    return Harness(Settings(cache_dir=cache_dir, catalogs=[str(ROBUST_DIGITS)]), lambda: torch.device("cpu"))


@pytest.mark.slow
def test_adversarial_training_raises_robust_accuracy_over_the_standard_twin(robust_harness):
    """Same network, data, optimiser and seed; trained on PGD examples it keeps far more points at eps 0.1."""
    twin, robust = (_points(robust_harness, model_id, 20) for model_id in ("demo-digits-cnn", "digits-cnn-pgd-at"))
    standard_result = run_autoattack(*twin, eps=0.1, seed=0)
    robust_result = run_autoattack(*robust, eps=0.1, seed=0)
    assert robust_result.clean_accuracy >= 0.9
    assert robust_result.robust_accuracy >= standard_result.robust_accuracy + 0.15
    assert not robust_result.unreliable, robust_result.unreliable_reasons


def test_pyautoattack_resnet18_is_a_pinned_package_file(harness):
    from pytest_securitynet.zoo.resolver import installed_package_dir, resolve_model

    entry = harness.catalog.model("cifar10-resnet18-fra31")
    (need,) = resolve_model(entry).needs
    assert need.at == installed_package_dir("pyautoattack") / "examples" / "model_test.pt"
    assert need.sha256 == entry.raw["sha256"]
    from pytest_securitynet.zoo.weights import load_model

    model = load_model(entry, harness.catalog, harness.files)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # ResNet-18, loaded strictly


def test_a_package_that_is_not_installed_is_named(tmp_path):
    from pytest_securitynet.catalog.entries import load_catalog
    from pytest_securitynet.errors import SecurityNetError
    from pytest_securitynet.zoo.store import FileStore
    from pytest_securitynet.zoo.resolver import fetch, resolve_model

    from conftest import model_toml

    (tmp_path / "m.toml").write_text(model_toml("x-missing", "package:no_such_package_xyz/w.pt",
                                                dataset="digits",
                                                extra='builder = "demo_cnn"\nsha256 = "' + "0" * 64 + '"'))
    from pytest_securitynet.catalog.entries import catalog_paths

    entry = load_catalog(catalog_paths([tmp_path / "m.toml"])).model("x-missing")
    with pytest.raises(SecurityNetError, match="no_such_package_xyz.*not installed"):
        fetch(resolve_model(entry), FileStore(cache_dir=tmp_path / "cache", offline=True))
