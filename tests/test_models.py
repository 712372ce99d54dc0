"""Model loading: safe unpickling, local checkpoints with named builders, the akamaster files."""

from __future__ import annotations

import os

import pytest
import torch

from pytest_securitynet.zoo.architectures import build
from pytest_securitynet.catalog.entries import BUILTIN_CATALOG, load_catalog
from pytest_securitynet.errors import UnsafeCheckpointError
from pytest_securitynet.zoo.weights import load_model, safe_load, state_dict_from
from pytest_securitynet.zoo.store import FileStore

from conftest import AKAMASTER_DIR, needs_shared


class _Payload:
    """Unpickling this would create a file: the marker of code having run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused to load .*evil.pt.*Nothing from it was executed"):
        safe_load(path)
    assert not marker.exists()


def test_local_checkpoint_with_named_builder(tmp_path):
    net = build("demo_cnn", num_classes=10, in_channels=1, width=8)
    torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "w.pt")
    (tmp_path / "mine.toml").write_text("""
[[models]]
id = "digits-mine"
dataset = "digits"
architecture = "democnn"
model_type = "cnn"
source = "file:w.pt"
builder = "demo_cnn"
builder_args = { num_classes = 10, in_channels = 1, width = 8 }
checkpoint = { state_dict_key = "model", strip_prefix = "module." }
preprocess = { input_size = [1, 8, 8], mean = [0.5], std = [0.25] }
annotations = { topic_category = "digits", training_set_size = 898, num_classes = 10, input_dims = "8x8x1", purpose = "benchmark" }
""")
    catalog = load_catalog([BUILTIN_CATALOG, tmp_path / "mine.toml"])
    model = load_model(catalog.model("digits-mine"), catalog, FileStore(cache_dir=tmp_path / "cache", mirrors=[], offline=True))
    x = torch.rand(4, 1, 8, 8)
    net.eval()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model(x), net((x - 0.5) / 0.25))


def test_only_prefixed_keeps_the_model_and_drops_other_copies():
    """A robust-models-transfer style checkpoint: the model beside an attacker copy and a normaliser."""
    net = build("demo_cnn", num_classes=10, in_channels=1, width=8)
    weights = net.state_dict()
    checkpoint = {"model": {**{f"module.model.{k}": v for k, v in weights.items()},
                            **{f"module.attacker.model.{k}": v + 1 for k, v in weights.items()},
                            "module.normalizer.new_mean": torch.zeros(3)}}
    entry = load_catalog([BUILTIN_CATALOG]).model("imagenet1k-resnet50_l2_eps3-robusttransfer")
    kept = state_dict_from(checkpoint, entry)
    assert kept.keys() == weights.keys()
    assert all(torch.equal(kept[k], weights[k]) for k in weights)
    build("demo_cnn", num_classes=10, in_channels=1, width=8).load_state_dict(kept, strict=True)


@needs_shared(AKAMASTER_DIR)
def test_akamaster_resnets_load_strictly_with_the_published_sizes(tmp_path):
    catalog = load_catalog([BUILTIN_CATALOG])
    store = FileStore(cache_dir=tmp_path, mirrors=[AKAMASTER_DIR], offline=True)
    sizes = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018}
    for depth, n_params in sizes.items():
        model = load_model(catalog.model(f"cifar10-resnet{depth}-akamaster"), catalog, store)
        assert sum(p.numel() for p in model.net.parameters()) == n_params
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
