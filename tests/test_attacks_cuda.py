"""The CUDA fast paths against their plain references, on a GPU (skipped without one).

CUDA graphs replay exactly the eager step, so a graphed run must match an eager run with the same
bf16/channels_last settings; bf16 must keep the verdicts and metrics within the tolerances the CPU
tests state. Small digits models keep the whole file to a few seconds on a GPU:
``PYTHONPATH=$PWD python3 -m pytest -q tests/test_attacks_cuda.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from pytest_securitynet.attacks.backdoor import neo, neural_cleanse, poison_dataset, strip, train_classifier
from pytest_securitynet.attacks.evasion import run_evasion
from pytest_securitynet.attacks.training import train_classifier_fast

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10),
    )


@pytest.fixture(scope="module")
def data():
    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * 255 / 16)).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    return images[order[:1200]], labels[order[:1200]], images[order[1200:]], labels[order[1200:]]


@pytest.fixture(scope="module")
def poisoned(data):
    x, y, _, _ = data
    px, py, _ = poison_dataset(x, y, target_label=7, poison_fraction=0.1, patch_size=2, seed=0)
    return train_classifier(_cnn(1), px, py, epochs=30, lr=3e-3, batch_size=64, device="cpu", seed=1).to(CUDA)


def test_neural_cleanse_graph_replays_the_eager_step(poisoned, data):
    common = dict(num_classes=10, epochs=10, n_samples=256, device=CUDA, seed=0, amp=True, channels_last=True)
    graphed = neural_cleanse(poisoned, data[2], cuda_graph=True, **common)
    eager = neural_cleanse(poisoned, data[2], cuda_graph=False, **common)
    assert graphed.cuda_graph and not eager.cuda_graph
    torch.testing.assert_close(graphed.masks, eager.masks, atol=1e-4, rtol=0)
    assert graphed.epochs_run == eager.epochs_run


def test_neural_cleanse_bf16_on_cuda_keeps_the_verdict(poisoned, data):
    fast = neural_cleanse(poisoned, data[2], num_classes=10, device=CUDA, seed=0)
    plain = neural_cleanse(poisoned, data[2], num_classes=10, device=CUDA, seed=0, amp=False,
                           channels_last=False, cuda_graph=False)
    assert fast.amp == "bfloat16" and fast.cuda_graph
    assert (fast.flagged, fast.suspect_label) == (plain.flagged, plain.suspect_label) == (True, 7)
    assert fast.suspect_anomaly_index == pytest.approx(plain.suspect_anomaly_index, rel=0.10)


def test_pgd_graph_and_bf16(poisoned, data):
    _, _, x, y = data
    common = dict(attack="pgd", steps=10, device=CUDA, seed=0, batch_size=256)
    graphed = run_evasion(poisoned, x, y, [0.03, 0.1], cuda_graph=True, **common)
    eager = run_evasion(poisoned, x, y, [0.03, 0.1], cuda_graph=False, **common)
    plain = run_evasion(poisoned, x, y, [0.03, 0.1], amp=False, channels_last=False, cuda_graph=False, **common)
    assert graphed.cuda_graph and graphed.adversarial_accuracy == eager.adversarial_accuracy
    for fast, reference in zip(graphed.adversarial_accuracy, plain.adversarial_accuracy):
        assert fast == pytest.approx(reference, abs=0.01)


def test_strip_and_neo_on_cuda_match_the_cpu(poisoned, data):
    _, _, x, _ = data
    kwargs = dict(frr=0.05, seed=0, amp=False, channels_last=False)
    on_gpu = strip(poisoned, x[:300], x[300:], device=CUDA, **kwargs)
    on_cpu = strip(poisoned.cpu(), x[:300], x[300:], device="cpu", **kwargs)
    poisoned.to(CUDA)
    torch.testing.assert_close(on_gpu.entropies, on_cpu.entropies, atol=1e-4, rtol=0)
    fast = neo(poisoned, x, n_inputs=200, block_size=2, device=CUDA, seed=0)
    plain = neo(poisoned, x, n_inputs=200, block_size=2, device=CUDA, seed=0, amp=False, channels_last=False)
    assert fast.flagged == plain.flagged
    assert fast.confirmed_fraction == pytest.approx(plain.confirmed_fraction, abs=0.02)


def test_train_classifier_fast_on_cuda(data):
    x, y, x_test, y_test = data
    model, stats = train_classifier_fast(_cnn(0), x, y, epochs=10, lr=0.05, device=CUDA)
    assert stats.amp == "bfloat16" and stats.channels_last and stats.tflop_per_s is not None
    with torch.no_grad():
        accuracy = (model(x_test.to(CUDA).float() / 255).argmax(1).cpu() == y_test).float().mean().item()
    assert accuracy > 0.85
