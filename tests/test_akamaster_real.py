"""The harness measures a real public model exactly as a plain torch evaluation of the same file does."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from pytest_securitynet.zoo.architectures import CifarResNet
from pytest_securitynet.harness.harness import Harness
from pytest_securitynet.harness.settings import Settings

from conftest import AKAMASTER_DIR, DATA_DIR, needs_shared

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def plain_test_accuracy(weights, archive) -> float:
    """Independent of the harness: read the JPEGs straight from the tarball, normalise by hand."""
    images, labels = [], []
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and parts[1] == "test":
                images.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
                labels.append(CLASSES.index(parts[2]))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    net = CifarResNet(20)
    state = torch.load(weights, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    net.eval()
    with torch.inference_mode():
        predicted = torch.cat([net(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return (predicted == torch.tensor(labels)).float().mean().item()


@needs_shared(AKAMASTER_DIR / "resnet20-12fca82f.th", DATA_DIR / "cifar10-jpeg.tar.gz")
@pytest.mark.slow
def test_resnet20_test_accuracy_matches_plain_torch(cache_dir):
    harness = Harness(Settings(cache_dir=cache_dir, dataset_overrides={"cifar10": "cifar10-jpeg"}, offline=True),
                      lambda: torch.device("cpu"))
    harness.files.mirrors = [AKAMASTER_DIR, DATA_DIR]
    loaded = harness.loaded(harness.catalog.model("cifar10-resnet20-akamaster"))
    test_set = loaded.sets["test"]
    assert len(test_set) == 10_000
    measured = (loaded.posteriors.get(test_set).argmax(1) == test_set.labels).float().mean().item()
    expected = plain_test_accuracy(AKAMASTER_DIR / "resnet20-12fca82f.th", DATA_DIR / "cifar10-jpeg.tar.gz")
    assert abs(measured - expected) < 0.001
    assert 0.80 < measured < 0.82  # the JPEG copy costs ~10 points against the published 91.7%
