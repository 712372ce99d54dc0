"""The harness side of the new membership attacks: the log-probability API and reference-model sets."""

from __future__ import annotations

import pytest
import torch

from pytest_securitynet.attacks.membership import attacker_split
from pytest_securitynet.attacks.reference_models import CIFAR_RECIPE, SMALL_INPUT_RECIPE
from pytest_securitynet.harness.reference import MATCHED_CIFAR_RESNET, reference_set, scored_indices, trainer_for
from pytest_securitynet.harness.target import BlackBoxTarget

pytestmark = pytest.mark.usefixtures("single_thread")

CNN = "demo-digits-cnn"


def test_log_probs_come_from_the_same_forward_pass_and_count_as_queries(harness):
    loaded = harness.loaded(harness.catalog.model(CNN))
    members = loaded.sets["members"]
    target = BlackBoxTarget(loaded.posteriors)
    posteriors = target.posteriors(members)
    before = loaded.posteriors.forward_samples
    log_probs = target.log_probs(members)
    assert loaded.posteriors.forward_samples == before  # read from the cached logits
    assert target.queries == 2 * len(members)
    assert log_probs.dtype == torch.float32
    assert torch.allclose(log_probs.exp(), posteriors, atol=1e-6)
    raw = target.log_probs(members.images[:5])  # raw tensors: answered, counted, not cached
    assert torch.allclose(raw, log_probs[:5], atol=1e-6) and target.queries == 2 * len(members) + 5
    for view in (target.topk(3), target.labels_only()):
        with pytest.raises(ValueError, match="no log-probabilities"):
            view.log_probs(members)


def test_reference_recipe_follows_the_entry_and_the_input_size(harness):
    cnn = harness.catalog.model(CNN)
    assert trainer_for(cnn, (1, 8, 8)).description["like"] == CNN  # a demo entry: its own recipe
    assert trainer_for(cnn, (1, 8, 8), architecture="small-cnn").description["recipe"]["architecture"] == "small-cnn"
    assert trainer_for(cnn, (1, 8, 8)).description["match"] == "target"
    akamaster = harness.catalog.model("cifar10-resnet20-akamaster")
    auto = trainer_for(akamaster, (3, 32, 32)).description
    assert auto["match"] == "family" and auto["family"] == "cifar-resnet"
    assert auto["recipe"] == {**MATCHED_CIFAR_RESNET.__dict__} and auto["recipe"]["architecture"] == "cifar-resnet20"
    assert auto["preprocess"] == {"mean": akamaster.preprocess["mean"], "std": akamaster.preprocess["std"]}
    # One set per dataset and family: ResNet-56 shares ResNet-20's models; another zoo's preprocessing does not.
    assert trainer_for(harness.catalog.model("cifar10-resnet56-akamaster"), (3, 32, 32)).description == auto
    pytorchcv = trainer_for(harness.catalog.model("cifar10-resnet20-pytorchcv"), (3, 32, 32)).description
    assert pytorchcv["recipe"] == auto["recipe"] and pytorchcv["preprocess"] != auto["preprocess"]
    assert trainer_for(akamaster, (3, 32, 32), epochs=3).description["recipe"]["epochs"] == 3
    chosen = trainer_for(akamaster, (3, 32, 32), architecture="cifar-resnet32").description
    assert chosen["match"] == "chosen" and chosen["recipe"]["architecture"] == "cifar-resnet32"
    with pytest.raises(ValueError, match="32 px RGB images; demo-digits-cnn takes"):
        trainer_for(cnn, (1, 8, 8), architecture="cifar-resnet20")
    small = trainer_for(akamaster, (3, 32, 32), architecture="small-cnn", epochs=5).description
    assert small["recipe"] == {**SMALL_INPUT_RECIPE.__dict__, "augment": True, "epochs": 5}
    assert small["match"] == "chosen"
    other = next(m for m in harness.catalog.models.values()
                 if m.dataset == "cifar10" and m.model_type not in ("resnet", "preresnet", "wrn", "resnext"))
    assert trainer_for(other, (3, 32, 32)).description == {"match": "fallback", "recipe": {**CIFAR_RECIPE.__dict__}}


def test_matched_cifar_resnet_trains_through_the_targets_preprocessing_and_reloads(harness):
    """The family trainer builds a CIFAR ResNet-20 behind the target's mean / std; the cache skeleton loads it."""
    entry = harness.catalog.model("cifar10-resnet20-akamaster")
    trainer = trainer_for(entry, (3, 32, 32), epochs=1)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=gen)
    model = trainer.train(images, torch.arange(32) % 10, num_classes=10, seed=0, device="cpu")
    assert model.mean.flatten().tolist() == pytest.approx(entry.preprocess["mean"])
    assert type(model.net).__name__ == "CifarResNet" and len(model.net.layer1) == 3  # depth 20: 3 blocks a stage
    skeleton = trainer.skeleton(32)
    skeleton.load_state_dict(model.state_dict())
    x = images[:4].float() / 255
    assert torch.allclose(skeleton.eval()(x), model(x))


def test_scored_indices_are_the_evaluation_halves(harness):
    loaded = harness.loaded(harness.catalog.model(CNN))
    members, nonmembers = loaded.sets["members"], loaded.sets["nonmembers"]
    scored = scored_indices(members, nonmembers, seed=0)
    split = attacker_split(len(members), len(nonmembers), 0)
    assert scored["train"].tolist() == members.indices[split.member_eval].tolist()
    assert scored["test"].tolist() == nonmembers.indices[split.nonmember_eval].tolist()


def test_reference_pool_never_holds_a_scored_sample_and_can_be_capped(harness, tmp_path):
    loaded = harness.loaded(harness.catalog.model(CNN))
    members, nonmembers = loaded.sets["members"], loaded.sets["nonmembers"]
    trainer = trainer_for(harness.catalog.model(CNN), (1, 8, 8), architecture="small-cnn", epochs=1)
    store = harness.files.__class__(cache_dir=tmp_path, mirrors=[], offline=True)
    refs = reference_set(store, loaded.data, trainer, members, nonmembers, num_classes=10, k=2, seed=0,
                         device=torch.device("cpu"), n_population=100, max_pool=300)
    scored = scored_indices(members, nonmembers, seed=0)
    assert refs.pool_size == 300 and refs.in_pool.shape == (2, 300) and refs.source == "trained"
    population = {z.split: set(z.indices.tolist()) for z in refs.population}
    assert sum(len(v) for v in population.values()) == 100
    for split, indices in population.items():
        assert indices.isdisjoint(scored[split].tolist())
    assert list((tmp_path / "reference" / "digits").glob("*.pt"))
    again = reference_set(store, loaded.data, trainer, members, nonmembers, num_classes=10, k=2, seed=0,
                          device=torch.device("cpu"), n_population=100, max_pool=300)
    assert again.source == "memory" and again.key == refs.key
    other = reference_set(store, loaded.data, trainer, members, nonmembers, num_classes=10, k=2, seed=1,
                          device=torch.device("cpu"), n_population=100, max_pool=300)
    assert other.key != refs.key
