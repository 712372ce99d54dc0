"""The harness side of the new membership attacks: the log-probability API and reference-model sets."""

from __future__ import annotations

import pytest
import torch

from pytest_securitynet.attacks.membership import attacker_split
from pytest_securitynet.attacks.reference_models import CIFAR_RECIPE, SMALL_INPUT_RECIPE
from pytest_securitynet.harness.reference import reference_set, scored_indices, trainer_for
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
    akamaster = harness.catalog.model("cifar10-resnet20-akamaster")
    auto = trainer_for(akamaster, (3, 32, 32)).description["recipe"]
    assert auto == {**CIFAR_RECIPE.__dict__}
    small = trainer_for(akamaster, (3, 32, 32), architecture="small-cnn", epochs=5).description["recipe"]
    assert small == {**SMALL_INPUT_RECIPE.__dict__, "augment": True, "epochs": 5}


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
