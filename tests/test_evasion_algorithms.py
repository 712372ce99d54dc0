"""FGSM / PGD and evaluate_evasion on a small classifier trained on scikit-learn's 8x8 digits."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from pytest_securitynet.attacks.evasion import evaluate_evasion, fgsm, pgd_linf, run_evasion

from work_counts import count_work

EPS = [0.01, 0.03, 0.1, 0.3]


pytestmark = pytest.mark.usefixtures("single_thread")


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Digits as the project stores images: uint8 [N, 1, 8, 8] (pixel values /16 * 255)."""
    data = load_digits()
    images = torch.tensor(data.images / 16.0 * 255.0).round().to(torch.uint8).unsqueeze(1)
    return images, torch.tensor(data.target, dtype=torch.long)


def _train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> nn.Module:
    x = images.float() / 255
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def split(digits):
    images, labels = digits
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1200], perm[1200:]
    return images[train], labels[train], images[test], labels[test]


@pytest.fixture(scope="module")
def model(split) -> nn.Module:
    x_train, y_train, _, _ = split
    return _train(_mlp(0), x_train, y_train)


@pytest.fixture(scope="module")
def test_set(split):
    _, _, x_test, y_test = split
    return x_test, y_test


def test_model_is_accurate(model, test_set):
    x, y = test_set
    with torch.no_grad():
        accuracy = (model(x.float() / 255).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9


@pytest.mark.parametrize("attack", [fgsm, pgd_linf])
def test_eps_zero_changes_nothing(model, test_set, attack):
    x, y = test_set
    images = x.float() / 255
    assert torch.equal(attack(model, images, y, 0.0), images)
    result = evaluate_evasion(model, x, y, [0.0], attack="fgsm" if attack is fgsm else "pgd")
    assert result[0.0]["accuracy_drop"] == 0.0
    assert result[0.0]["adversarial_accuracy"] == result[0.0]["clean_accuracy"]


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_drop_grows_with_eps(model, test_set, attack):
    x, y = test_set
    result = evaluate_evasion(model, x, y, EPS, attack=attack, batch_size=256)
    drops = [result[eps]["accuracy_drop"] for eps in EPS]
    assert drops == sorted(drops)
    assert drops[0] < drops[-1]
    assert drops[-1] > 0.6
    clean = {result[eps]["clean_accuracy"] for eps in EPS}
    assert len(clean) == 1


def test_pgd_at_least_as_strong_as_fgsm(model, test_set):
    x, y = test_set
    f = evaluate_evasion(model, x, y, EPS, attack="fgsm")
    p = evaluate_evasion(model, x, y, EPS, attack="pgd", steps=10)
    for eps in EPS:
        assert p[eps]["accuracy_drop"] >= f[eps]["accuracy_drop"]
    assert p[0.1]["accuracy_drop"] > f[0.1]["accuracy_drop"]


@pytest.mark.parametrize("eps", EPS)
def test_adversarial_images_within_eps_and_range(model, test_set, eps):
    x, y = test_set
    images = x.float() / 255
    for adv in (fgsm(model, images, y, eps),
                pgd_linf(model, images, y, eps, steps=5, generator=torch.Generator().manual_seed(1))):
        assert adv.shape == images.shape
        assert (adv - images).abs().max().item() <= eps + 1e-6
        assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0
        assert (adv - images).abs().max().item() >= 0.99 * eps


def test_fgsm_is_one_signed_gradient_step(model, test_set):
    x, y = test_set
    images = (x[:5].float() / 255).clamp(0.2, 0.8)
    leaf = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(leaf), y[:5]), leaf)
    expected = images + 0.1 * grad.sign()
    assert torch.allclose(fgsm(model, images, y[:5], 0.1), expected)


def test_evaluate_matches_direct_fgsm(model, test_set):
    x, y = test_set
    images = x.float() / 255
    with torch.no_grad():
        clean = (model(images).argmax(1) == y).float().mean().item()
        adv = (model(fgsm(model, images, y, 0.03)).argmax(1) == y).float().mean().item()
    result = evaluate_evasion(model, x, y, [0.03], attack="fgsm", batch_size=100)
    assert result[0.03]["clean_accuracy"] == pytest.approx(clean)
    assert result[0.03]["adversarial_accuracy"] == pytest.approx(adv)
    assert result[0.03]["accuracy_drop"] == pytest.approx(clean - adv)


def test_parameters_get_no_gradients(model, test_set):
    x, y = test_set
    model = copy.deepcopy(model)
    images = x[:64].float() / 255
    fgsm(model, images, y[:64], 0.1)
    pgd_linf(model, images, y[:64], 0.1, steps=3)
    evaluate_evasion(model, x[:64], y[:64], [0.1], attack="pgd", steps=2)
    for p in model.parameters():
        assert p.grad is None
        assert p.requires_grad


def test_pgd_seeded_random_start(model, test_set):
    x, y = test_set
    images = x[:64].float() / 255
    runs = [pgd_linf(model, images, y[:64], 0.1, steps=1, generator=torch.Generator().manual_seed(s))
            for s in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    no_start = pgd_linf(model, images, y[:64], 0.1, steps=1, random_start=False)
    assert torch.allclose(no_start, fgsm(model, images, y[:64], 0.025))


def test_transfer_uses_source_gradients(model, test_set):
    x, y = test_set
    white = evaluate_evasion(model, x, y, [0.1], attack="fgsm")[0.1]
    same_source = evaluate_evasion(model, x, y, [0.1], attack="fgsm", source_model=model)[0.1]
    assert same_source == white
    random_source = _mlp(123).eval()
    transfer = evaluate_evasion(model, x, y, [0.1], attack="fgsm", source_model=random_source)[0.1]
    assert transfer["clean_accuracy"] == white["clean_accuracy"]
    assert white["accuracy_drop"] - transfer["accuracy_drop"] > 0.2
    for p in random_source.parameters():
        assert p.grad is None


def test_rejects_bad_arguments(model, test_set):
    x, y = test_set
    with pytest.raises(ValueError):
        fgsm(model, x[:2].float() / 255, y[:2], -0.1)
    with pytest.raises(ValueError):
        evaluate_evasion(model, x.float(), y, [0.1])
    with pytest.raises(ValueError):
        evaluate_evasion(model, x, y, [0.1], attack="cw")


def _accuracy(model, images, labels) -> float:
    with torch.no_grad():
        return (model(images).argmax(1) == labels).double().mean().item()


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_run_evasion_equals_the_plain_reference(model, test_set, attack):
    """One batch, fp32: the device-resident loop gives exactly the accuracies of fgsm/pgd_linf."""
    x, y = test_set
    images = x.float() / 255
    result = run_evasion(model, x, y, [0.03, 0.1], attack=attack, steps=7, batch_size=len(x), seed=5)
    generator = torch.Generator().manual_seed(5)
    for eps, adversarial in zip(result.eps, result.adversarial_accuracy):
        adv = fgsm(model, images, y, eps) if attack == "fgsm" else pgd_linf(model, images, y, eps, steps=7,
                                                                             generator=generator)
        assert adversarial == pytest.approx(_accuracy(model, adv, y), abs=1e-12)
    assert result.clean_accuracy == pytest.approx(_accuracy(model, images, y), abs=1e-12)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_bf16_gradients_keep_adversarial_accuracy(model, test_set, attack):
    """bf16 autocast of the gradient passes (the CUDA default) against fp32: adversarial accuracy
    within 0.01 at every eps, clean accuracy identical (it is always measured in fp32)."""
    x, y = test_set
    reference = run_evasion(model, x, y, EPS, attack=attack, amp=False)
    bf16 = run_evasion(model, x, y, EPS, attack=attack, amp=True)
    assert bf16.amp == "bfloat16" and reference.amp is None
    assert bf16.clean_accuracy == reference.clean_accuracy
    for fast, plain in zip(bf16.adversarial_accuracy, reference.adversarial_accuracy):
        assert fast == pytest.approx(plain, abs=0.01)


def test_pgd_step_loop_has_no_host_reads(model, test_set):
    """Per PGD step: one forward and one backward pass per batch and no host read; all images in one
    batch need one pass per step where batches of 100 need six."""
    x, y = test_set
    counts = {}
    for steps, batch in ((5, 100), (10, 100), (10, len(x))):
        with count_work(model) as counts[steps, batch]:
            run_evasion(model, x, y, [0.1], attack="pgd", steps=steps, batch_size=batch)
    batches = -(-len(x) // 100)
    assert counts[10, 100].forward_calls - counts[5, 100].forward_calls == 5 * batches
    assert counts[10, 100].backward_passes - counts[5, 100].backward_passes == 5 * batches
    assert counts[10, 100].host_syncs == counts[5, 100].host_syncs <= 3
    assert counts[10, len(x)].backward_passes == 10
    assert counts[10, len(x)].forward_images == counts[10, 100].forward_images == (10 + 2) * len(x)


def test_evasion_result_records_settings_phases_and_flops(model, test_set):
    x, y = test_set
    result = run_evasion(model, x, y, [0.0, 0.1], attack="pgd", steps=4, seed=2)
    record = result.as_record()
    assert json.loads(json.dumps(record)) == record
    assert record["eps"] == [0.0, 0.1] and record["steps"] == 4 and record["step_size"] == [0.0, 0.025]
    assert record["batch_size"] == 512 and record["seed"] == 2 and record["random_start"]
    assert record["gradient_passes"] == 4 and not record["transfer"]
    assert set(record["phases"]) == {"setup", "evaluation", "attack"}
    forward = 2 * (64 * 128 + 128 * 10)  # the MLP's two linear layers; the input gradient costs the same
    assert record["flops"] == pytest.approx(len(x) * (4 * 2 * forward + 2 * forward))
    assert result.by_eps()[0.1]["adversarial_accuracy"] == record["adversarial_accuracy"][1]

