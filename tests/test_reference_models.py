"""Reference-model training for RMIA and LiRA: data split, determinism, recipes, outputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from pytest_securitynet.attacks.reference_models import (
    CIFAR_RECIPE,
    DEFAULT_K,
    SMALL_INPUT_RECIPE,
    build_reference_network,
    default_recipe,
    inclusion_matrix,
    recipe_key,
    reference_log_probs,
    train_classifier,
    train_reference_models,
)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dataclasses.replace(SMALL_INPUT_RECIPE, epochs=2)


def _images(n: int, seed: int, side: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, side, side), generator=gen, dtype=torch.uint8), torch.randint(10, (n,), generator=gen)


@pytest.mark.parametrize("k", [1, 2, 4, 5])
def test_each_pool_sample_is_in_half_of_the_models(k):
    matrix = inclusion_matrix(1000, k, seed=0)
    assert matrix.shape == (k, 1000) and matrix.dtype == torch.bool
    counts = matrix.sum(dim=0)
    assert set(counts.tolist()) <= {k // 2, k // 2 + k % 2}
    if k % 2:
        assert 0.4 < float((counts == k // 2 + 1).double().mean()) < 0.6
    assert torch.equal(matrix, inclusion_matrix(1000, k, seed=0))
    assert not torch.equal(matrix, inclusion_matrix(1000, k, seed=1))


def test_train_fn_gets_each_models_half_and_its_own_seed():
    images, labels = _images(40, seed=1)
    calls = []

    def recording_train_fn(x, y, *, num_classes, seed, device):
        calls.append((x.clone(), y.clone(), num_classes, seed))
        return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

    refs = train_reference_models(images, labels, num_classes=10, k=DEFAULT_K, seed=3, train_fn=recording_train_fn)
    assert len(refs.models) == len(calls) == 4 and refs.in_pool.shape == (4, 40)
    assert len({call[3] for call in calls}) == 4
    for (x, y, num_classes, _), rows in zip(calls, refs.in_pool):
        assert torch.equal(x, images[rows]) and torch.equal(y, labels[rows]) and num_classes == 10
    assert all(not model.training for model in refs.models)


def test_training_is_deterministic_by_seed_and_leaves_the_global_generator_alone():
    images, labels = _images(64, seed=2)
    state = torch.random.get_rng_state()
    first = train_classifier(images, labels, num_classes=10, seed=0, recipe=TINY)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = train_classifier(images, labels, num_classes=10, seed=0, recipe=TINY)
    other = train_classifier(images, labels, num_classes=10, seed=1, recipe=TINY)
    for name, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    assert any(not torch.equal(v, other.state_dict()[n]) for n, v in first.state_dict().items())


def test_small_recipe_learns_the_digits(harness):
    """The default small-input recipe, on 450 training digits, classifies the 899 test digits (measured: 0.983, seed 0)."""
    data = harness.loaded(harness.catalog.model("demo-digits-cnn")).data
    model = train_classifier(data.train_images[:450], data.train_labels[:450], num_classes=10, seed=0)
    log_probs = reference_log_probs([model], data.test_images)
    accuracy = float((log_probs[0].argmax(dim=1) == data.test_labels).double().mean())
    assert accuracy > 0.9


def test_reference_log_probs_are_normalised_per_model():
    images, labels = _images(30, seed=4)
    refs = train_reference_models(images, labels, num_classes=10, k=2, recipe=TINY, seed=0)
    out = reference_log_probs(refs.models, images, batch_size=7)
    assert out.shape == (2, 30, 10) and out.dtype == torch.float32
    assert torch.allclose(out.exp().sum(dim=-1), torch.ones(2, 30), atol=1e-5)
    assert not torch.equal(out[0], out[1])


def test_default_architecture_by_input_size():
    assert default_recipe(8) is SMALL_INPUT_RECIPE and default_recipe(32) is CIFAR_RECIPE
    small = build_reference_network(SMALL_INPUT_RECIPE, 10, 8, 1)
    assert small(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    resnet = build_reference_network(CIFAR_RECIPE, 10, 32, 3)
    assert 11_000_000 < sum(p.numel() for p in resnet.parameters()) < 11_300_000  # ResNet-18 size
    assert resnet(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_recipe_key_names_everything_that_changes_the_models():
    pool = {"train": torch.arange(10), "test": torch.arange(5)}
    key = recipe_key("digits", SMALL_INPUT_RECIPE, 4, 0, pool)
    assert key == recipe_key("digits", SMALL_INPUT_RECIPE, 4, 0, {"train": torch.arange(10), "test": torch.arange(5)})
    others = [
        recipe_key("digits-other", SMALL_INPUT_RECIPE, 4, 0, pool),
        recipe_key("digits", dataclasses.replace(SMALL_INPUT_RECIPE, epochs=41), 4, 0, pool),
        recipe_key("digits", SMALL_INPUT_RECIPE, 2, 0, pool),
        recipe_key("digits", SMALL_INPUT_RECIPE, 4, 1, pool),
        recipe_key("digits", SMALL_INPUT_RECIPE, 4, 0, {"train": torch.arange(1, 11), "test": torch.arange(5)}),
    ]
    assert len({key, *others}) == 6


def test_rejects_bad_pools():
    images, labels = _images(10, seed=5)
    with pytest.raises(ValueError):
        train_reference_models(images, labels[:5], num_classes=10)
    with pytest.raises(ValueError):
        train_classifier(images.float(), labels, num_classes=10, seed=0)
    with pytest.raises(ValueError):
        inclusion_matrix(10, 0, seed=0)


def test_resnet_recipe_trains_through_the_fast_path_deterministically():
    """The SGD recipe (CIFAR ResNet-18) uses model stealing's `train_classifier_fast`; one tiny epoch, twice."""
    gen = torch.Generator().manual_seed(6)
    images = torch.randint(0, 256, (16, 3, 32, 32), generator=gen, dtype=torch.uint8)
    labels = torch.randint(10, (16,), generator=gen)
    recipe = dataclasses.replace(CIFAR_RECIPE, epochs=1, batch_size=8)
    first = train_classifier(images, labels, num_classes=10, seed=0, recipe=recipe)
    again = train_classifier(images, labels, num_classes=10, seed=0, recipe=recipe)
    assert not first.training
    for name, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    assert reference_log_probs([first], images[:4]).shape == (1, 4, 10)
