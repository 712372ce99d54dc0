"""Knockoff-style stealing and the surrogate builders, on scikit-learn's 8x8 digits (CPU, fast)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from pytest_securitynet.attacks.stealing import (
    evaluate_surrogate,
    query_target,
    random_crop_flip,
    run_model_stealing,
    steal,
    training_flops,
)
from pytest_securitynet.attacks.surrogate_cache import SurrogateCache, SurrogateRecipe
from pytest_securitynet.attacks.surrogates import Normalize, Resize, build_surrogate, cifar_resnet18
from pytest_securitynet.attacks.training import train_classifier_fast

from work_counts import count_work

LR = 0.05  # the tiny CNN below needs a larger rate than the paper's 0.01 for ResNet-18


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_cnn(num_classes: int = 10, input_size: int = 8, in_channels: int = 1) -> nn.Module:
    """Builder with the ``steal`` signature ``(num_classes, input_size, in_channels)``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * (input_size // 2) ** 2, num_classes),
    )


@pytest.fixture(scope="module")
def digits():
    """uint8 [N, 1, 8, 8] digits split into the target's training set (1200) and a test set."""
    data = load_digits()
    images = torch.tensor(data.images / 16.0 * 255.0).round().to(torch.uint8).unsqueeze(1)
    labels = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1200], perm[1200:]
    return images[train], labels[train], images[test], labels[test]


@pytest.fixture(scope="module")
def target(digits) -> nn.Module:
    x_train, y_train, _, _ = digits
    torch.manual_seed(0)
    model = tiny_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = x_train.float() / 255
    for _ in range(80):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y_train).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def queries(digits, target):
    """SecurityNet's default auxiliary set: half of the target's training data, with posteriors."""
    images = digits[0][:600]
    return images, query_target(target, images)


def _agreement(surrogate, target, digits) -> float:
    _, _, x_test, y_test = digits
    return evaluate_surrogate(surrogate, target, x_test, y_test)["agreement"]


def test_target_is_accurate(target, digits):
    _, _, x_test, y_test = digits
    assert evaluate_surrogate(target, target, x_test, y_test)["target_accuracy"] > 0.9


def test_query_target_returns_posteriors(target, queries):
    images, posteriors = queries
    assert posteriors.shape == (600, 10)
    assert torch.allclose(posteriors.sum(1), torch.ones(600), atol=1e-5)
    with torch.no_grad():
        expected = target(images.float() / 255).softmax(1)
    assert torch.allclose(posteriors, expected, atol=1e-6)


def test_full_query_set_reaches_high_agreement(target, queries, digits):
    images, posteriors = queries
    surrogate, info = steal(images, posteriors, num_classes=10, surrogate=tiny_cnn, lr=LR)
    assert not surrogate.training
    assert info["queries"] == 600 and info["epochs"] == 30
    assert info["steps"] == 30 * 5 and info["batch_size"] == 128
    assert info["train_time_s"] > 0 and info["final_train_loss"] < 0.5
    assert _agreement(surrogate, target, digits) > 0.9


def test_one_percent_of_queries_is_clearly_worse(target, queries, digits):
    images, posteriors = queries
    full, _ = steal(images, posteriors, num_classes=10, surrogate=tiny_cnn, lr=LR)
    few, info = steal(images[:6], posteriors[:6], num_classes=10, surrogate=tiny_cnn, lr=LR)
    assert info["queries"] == 6
    assert _agreement(full, target, digits) - _agreement(few, target, digits) >= 0.15


def test_label_only_trains_on_top1_labels(target, queries, digits):
    images, posteriors = queries
    from_posteriors, _ = steal(images, posteriors, num_classes=10, surrogate=tiny_cnn, lr=LR,
                               label_only=True)
    from_labels, _ = steal(images, posteriors.argmax(1), num_classes=10, surrogate=tiny_cnn,
                           lr=LR, label_only=True)
    for a, b in zip(from_posteriors.parameters(), from_labels.parameters()):
        assert torch.equal(a, b)
    assert _agreement(from_labels, target, digits) > 0.85
    with pytest.raises(ValueError):
        steal(images, posteriors.argmax(1), num_classes=10, surrogate=tiny_cnn)


@pytest.mark.parametrize("label_only", [False, True])
def test_training_loss_is_soft_or_hard_cross_entropy(queries, label_only):
    """With lr 0 the model never changes, so the reported loss is the loss of the initial model.
    Posteriors are drawn flat enough that soft and hard cross-entropy differ clearly."""
    images, _ = queries
    logits = torch.randn(len(images), 10, generator=torch.Generator().manual_seed(0))
    posteriors = logits.softmax(1)
    torch.manual_seed(5)
    model = tiny_cnn()
    _, info = steal(images, posteriors, num_classes=10, surrogate=model, epochs=1, lr=0.0,
                    schedule="constant", label_only=label_only)
    with torch.no_grad():
        log_probs = model(images.float() / 255).log_softmax(1)
    if label_only:
        expected = F.nll_loss(log_probs, posteriors.argmax(1)).item()
    else:
        expected = -(posteriors * log_probs).sum(1).mean().item()
    assert info["final_train_loss"] == pytest.approx(expected, rel=1e-5)


def test_seeded_training_is_deterministic(queries):
    images, posteriors = queries
    runs = [steal(images[:100], posteriors[:100], num_classes=10, surrogate=tiny_cnn, epochs=2,
                  seed=s)[0] for s in (1, 1, 2)]
    params = [torch.cat([p.flatten() for p in m.parameters()]) for m in runs]
    assert torch.equal(params[0], params[1])
    assert not torch.equal(params[0], params[2])


def test_rejects_logits_and_bad_shapes(queries):
    images, posteriors = queries
    with pytest.raises(ValueError, match="softmax"):
        steal(images, posteriors.log(), num_classes=10, surrogate=tiny_cnn)
    with pytest.raises(ValueError):
        steal(images, posteriors[:10], num_classes=10, surrogate=tiny_cnn)
    with pytest.raises(ValueError):
        steal(images.float(), posteriors, num_classes=10, surrogate=tiny_cnn)


def test_resnet18_by_name_end_to_end(queries, target, digits):
    images, posteriors = queries
    surrogate, info = steal(images[:64], posteriors[:64], num_classes=10, epochs=1)
    assert isinstance(surrogate[0], Normalize)
    assert info["steps"] == 1 and info["queries"] == 64
    with torch.no_grad():
        assert surrogate(digits[2][:4].float() / 255).shape == (4, 10)
    assert set(evaluate_surrogate(surrogate, target, digits[2], digits[3])) == {
        "attack_accuracy", "agreement", "target_accuracy"}


def test_input_size_differs_from_queries(queries):
    images, posteriors = queries
    seen = []

    def builder(num_classes: int, input_size: int, in_channels: int) -> nn.Module:
        seen.append((num_classes, input_size, in_channels))
        return tiny_cnn(num_classes, input_size, in_channels)

    surrogate, _ = steal(images[:50], posteriors[:50], num_classes=10, surrogate=builder,
                         input_size=16, epochs=1)
    assert seen == [(10, 16, 1)]
    assert isinstance(surrogate[0], Resize)
    with torch.no_grad():
        assert surrogate(images[:3].float() / 255).shape == (3, 10)


def test_evaluate_surrogate_known_answer(target, digits):
    _, _, x_test, y_test = digits
    with torch.no_grad():
        accuracy = (target(x_test.float() / 255).argmax(1) == y_test).double().mean().item()
    constant = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    nn.init.zeros_(constant[1].weight)
    with torch.no_grad():
        constant[1].bias.copy_(torch.arange(10.0))
    same = evaluate_surrogate(target, target, x_test, y_test, batch_size=100)
    assert same == pytest.approx({"attack_accuracy": accuracy, "agreement": 1.0,
                                  "target_accuracy": accuracy})
    always_nine = evaluate_surrogate(constant, target, x_test, y_test, batch_size=100)
    assert always_nine["attack_accuracy"] == pytest.approx((y_test == 9).double().mean().item())


def test_random_crop_flip_takes_windows_of_padded_images():
    images = torch.randint(0, 256, (64, 2, 6, 6), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(random_crop_flip(images, 0, hflip=False, generator=generator), images)
    out = random_crop_flip(images, 2, hflip=True, generator=generator)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images, (2, 2, 2, 2))
    flipped = 0
    for i in range(64):
        windows = [padded[i, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        plain = any(torch.equal(out[i], w) for w in windows)
        mirrored = any(torch.equal(out[i], w.flip(-1)) for w in windows)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 10 < flipped < 54


def test_cifar_resnet18_shapes_and_size():
    model = cifar_resnet18(10).eval()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.2e6, rel=0.01)
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
        assert cifar_resnet18(7, in_channels=1).eval()(torch.rand(2, 1, 8, 8)).shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet18", "wrn50_2"])
def test_build_surrogate_output_shapes(name):
    small = build_surrogate(name, 10, input_size=8, in_channels=1).eval()
    with torch.no_grad():
        assert small(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with torch.device("meta"):
        cifar = build_surrogate(name, 100, input_size=32, in_channels=3)
        assert cifar.eval()(torch.empty(2, 3, 32, 32)).shape == (2, 100)


def test_build_surrogate_stems():
    with torch.device("meta"):
        wrn = build_surrogate("wrn50_2", 10, input_size=32, in_channels=3)[1]
        imagenet = build_surrogate("resnet18", 10, input_size=224, in_channels=1)[1]
    assert wrn.conv1.kernel_size == (3, 3) and isinstance(wrn.maxpool, nn.Identity)
    assert sum(p.numel() for p in wrn.parameters()) == pytest.approx(66.8e6, rel=0.01)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.in_channels == 1
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    with pytest.raises(ValueError):
        build_surrogate("vgg16", 10, 32, 3)


def test_normalize_maps_unit_interval_to_symmetric():
    assert torch.equal(Normalize()(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))


def test_training_flops_known_answer():
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 10, bias=False))
    # forward 2*64*10 + weight gradient 2*64*10 per sample (the input needs no gradient)
    assert training_flops(linear, (1, 8, 8), n_samples=100, epochs=3) == 2 * 1280 * 100 * 3
    per_sample = training_flops(build_surrogate("resnet18", 10, 32, 3), (3, 32, 32), 1, 1)
    assert 3.0e9 < per_sample < 3.6e9


def test_top_k_answers_train_as_their_renormalised_distribution(queries):
    images, posteriors = queries
    top = posteriors.topk(3, dim=1)
    partial = torch.zeros_like(posteriors).scatter_(1, top.indices, top.values)
    renormalised = partial / partial.sum(1, keepdim=True)
    _, from_partial = steal(images[:64], partial[:64], num_classes=10, surrogate=tiny_cnn, epochs=1, seed=3)
    _, from_renormalised = steal(images[:64], renormalised[:64], num_classes=10, surrogate=tiny_cnn, epochs=1, seed=3)
    assert from_partial["final_train_loss"] == pytest.approx(from_renormalised["final_train_loss"], rel=1e-6)


def _seeded_tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return tiny_cnn()


def test_train_classifier_fast_takes_uint8_or_float_images(digits):
    x_train, y_train, _, _ = digits
    settings = dict(epochs=2, lr=LR, seed=4, augment=True)
    from_uint8, stats = train_classifier_fast(_seeded_tiny_cnn(), x_train[:256], y_train[:256], **settings)
    from_float, _ = train_classifier_fast(_seeded_tiny_cnn(), x_train[:256].float() / 255, y_train[:256], **settings)
    for a, b in zip(from_uint8.parameters(), from_float.parameters()):
        assert torch.equal(a, b)
    assert not from_uint8.training and not stats.soft_targets and stats.steps == 2 * 2
    assert stats.batch_size == 128 and stats.lr == pytest.approx(LR) and stats.amp is None


def test_train_classifier_fast_bf16_keeps_accuracy(digits, target):
    """bf16 autocast (the CUDA default) against fp32 on the CPU: test accuracy within 0.03."""
    x_train, y_train, x_test, y_test = digits
    accuracy = {}
    for amp in (False, True):
        model, stats = train_classifier_fast(_seeded_tiny_cnn(), x_train, y_train, epochs=10, lr=LR, amp=amp)
        accuracy[amp] = evaluate_surrogate(model, target, x_test, y_test)["attack_accuracy"]
        assert stats.amp == ("bfloat16" if amp else None)
    assert accuracy[False] > 0.9
    assert accuracy[True] == pytest.approx(accuracy[False], abs=0.03)


def test_training_loop_has_no_host_reads(digits):
    """One forward and one backward pass per step; the only host read is the final loss."""
    x_train, y_train, _, _ = digits
    counts = {}
    for epochs in (1, 3):
        model = _seeded_tiny_cnn()
        with count_work(model) as counts[epochs]:
            _, stats = train_classifier_fast(model, x_train[:300], y_train[:300], epochs=epochs, lr=LR)
        assert counts[epochs].forward_calls == counts[epochs].backward_passes == stats.steps == 3 * epochs
    assert counts[1].host_syncs == counts[3].host_syncs == 1


def test_run_model_stealing_records_phases_settings_and_flops(queries, target, digits):
    images, posteriors = queries
    asked = []

    def answer():
        asked.append(len(images))
        return posteriors

    _, _, x_test, y_test = digits
    surrogate, result = run_model_stealing(answer, images, target, x_test, y_test, num_classes=10,
                                           surrogate=tiny_cnn, epochs=3, lr=LR, seed=1)
    record = result.as_record()
    assert json.loads(json.dumps(record)) == record
    assert asked == [600] and record["n_queries"] == 600 and record["input_size"] == 8
    assert set(record["phases"]) == {"queries", "training", "evaluation"}
    assert record["training"]["epochs"] == 3 and record["training"]["momentum"] == 0.9
    assert record["training"]["soft_targets"] and record["training"]["schedule"] == "cosine"
    assert record["flops"] == training_flops(surrogate, (1, 8, 8), 600, 3) and record["tflop_per_s"] > 0
    assert record["agreement"] == evaluate_surrogate(surrogate, target, x_test, y_test)["agreement"]


def test_surrogate_cache_trains_once_per_data_and_recipe(queries):
    images, posteriors = queries
    cache = SurrogateCache()
    recipe = SurrogateRecipe(epochs=1, label_only=True)
    first, stats, cached = cache.get_or_train("digits-64", recipe, images[:64], posteriors[:64], num_classes=10,
                                              device="cpu")
    again, same_stats, cached_again = cache.get_or_train("digits-64", recipe, images[:64], posteriors[:64],
                                                         num_classes=10, device="cpu")
    assert not cached and cached_again and again is first and same_stats is stats
    other, _, cached_other = cache.get_or_train("digits-64", SurrogateRecipe(epochs=1, label_only=True, seed=1),
                                                images[:64], posteriors[:64], num_classes=10, device="cpu")
    assert not cached_other and other is not first and len(cache) == 2
    assert stats.epochs == 1 and not stats.soft_targets

