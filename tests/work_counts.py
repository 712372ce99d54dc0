"""Count the work an attack does on the CPU: model forward calls and images, backward passes, host syncs.

``count_work(model)`` is a context manager used by the work-count tests. Forward calls and images
are counted with a forward hook on the model; a backward pass is counted when the gradient reaches
the model's output. Host synchronisations are the operations that would make the host wait for a
GPU: reading a tensor's value (``.item()``, ``bool()``, ``int()``, ``float()``), copying it out
(``.cpu()``, ``.numpy()``, ``.tolist()``) and operations whose output size depends on the data
(``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``, ``repeat_interleave`` with
tensor repeats). Run on the CPU the counts are exactly those the same code would make on a GPU.

Run as a script it prints the counts of every attack on a small digits case (see docs/performance.md):
``PYTHONPATH=$PWD OMP_NUM_THREADS=1 python3 tests/work_counts.py``. The script uses only the public
functions whose signatures predate the fast paths, so it also measures older commits;
``python3 tests/work_counts.py neo-rounds`` compares NEO's search modes (this branch only).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

_DATA_DEPENDENT = {
    "aten._local_scalar_dense": "scalar read",
    "aten.nonzero": "nonzero",
    "aten.masked_select": "masked_select",
    "aten._unique2": "unique",
    "aten.unique_dim": "unique",
    "aten.unique_consecutive": "unique",
    "aten.repeat_interleave": "repeat_interleave",
}
_COPIES_OUT = ("cpu", "numpy", "tolist")


@dataclass
class WorkCount:
    """Counts collected inside one ``count_work`` block."""

    forward_calls: int = 0
    forward_images: int = 0
    backward_passes: int = 0
    syncs: Counter = field(default_factory=Counter)

    @property
    def host_syncs(self) -> int:
        return sum(self.syncs.values())


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class _SyncCounter(TorchDispatchMode):
    """Counts aten operations that need a value or a size on the host."""

    def __init__(self, count: WorkCount) -> None:
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        tensor_repeats = len(args) > 1 and isinstance(args[1], torch.Tensor)
        if name in _DATA_DEPENDENT and (name != "aten.repeat_interleave" or tensor_repeats):
            self.count.syncs[_DATA_DEPENDENT[name]] += 1
        elif name in ("aten.index", "aten.index_put", "aten.index_put_") and _has_bool_index(args):
            self.count.syncs["boolean index"] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _count_copies_out(count: WorkCount) -> Iterator[None]:
    originals = {name: getattr(torch.Tensor, name) for name in _COPIES_OUT}

    def counting(name: str):
        original = originals[name]

        def method(self, *args, **kwargs):
            count.syncs[f".{name}()"] += 1
            return original(self, *args, **kwargs)

        return method

    for name in _COPIES_OUT:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@contextlib.contextmanager
def count_work(model: nn.Module) -> Iterator[WorkCount]:
    """Count ``model``'s forward calls/images, backward passes and all host syncs inside the block."""
    count = WorkCount()

    def on_forward(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        count.forward_calls += 1
        count.forward_images += int(inputs[0].shape[0])
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(on_backward)

    def on_backward(grad: torch.Tensor) -> None:
        count.backward_passes += 1

    handle = model.register_forward_hook(on_forward)
    try:
        with _count_copies_out(count), _SyncCounter(count):
            yield count
    finally:
        handle.remove()


def _digits_case():
    """The digits CNN (trained on BadNets-poisoned data, target 7, 2x2 patch) and the digits split."""
    import numpy as np
    from sklearn.datasets import load_digits

    from pytest_securitynet.attacks.backdoor import poison_dataset, train_classifier, trigger_images_uint8

    torch.set_num_threads(1)
    data = load_digits()
    images = torch.from_numpy(np.round(data.images * 255 / 16)).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(data.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train_x, train_y = images[order[:1200]], labels[order[:1200]]
    test_x, test_y = images[order[1200:]], labels[order[1200:]]
    poisoned_x, poisoned_y, _ = poison_dataset(train_x, train_y, target_label=7, poison_fraction=0.1,
                                               patch_size=2, seed=0)
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10),
    )
    model = train_classifier(model, poisoned_x, poisoned_y, epochs=10, lr=3e-3, batch_size=64, device="cpu", seed=1)
    return model, train_x, test_x, test_y, trigger_images_uint8(test_x[test_y != 7], 2)


def main() -> None:
    """Print the work counts of every attack on the digits case."""
    from pytest_securitynet.attacks.backdoor import neo, neural_cleanse, neural_cleanse_sequential, strip
    from pytest_securitynet.attacks.evasion import evaluate_evasion
    from pytest_securitynet.attacks.stealing import query_target, steal

    model, train_x, test_x, test_y, triggered = _digits_case()
    nc = dict(num_classes=10, epochs=5, n_samples=256, device="cpu", seed=0)
    runs = {
        "neural_cleanse (5 epochs, 256 images, 10 labels)": lambda: neural_cleanse(model, test_x, **nc),
        "neural_cleanse_sequential (same)": lambda: neural_cleanse_sequential(model, test_x, **nc),
        "neo (300 triggered inputs, 49 blocks)": lambda: neo(model, test_x, inputs_to_score=triggered, n_inputs=300,
                                                             block_size=2, device="cpu", seed=0),
        "neo (300 clean inputs, 49 blocks)": lambda: neo(model, test_x, n_inputs=300, block_size=2, device="cpu", seed=0),
        "strip (297 inputs, 10 overlays)": lambda: strip(model, test_x[:297], test_x[297:], device="cpu", seed=0),
        "pgd-10 (597 images, batch 256)": lambda: evaluate_evasion(model, test_x, test_y, [0.1], attack="pgd",
                                                                  steps=10, batch_size=256),
        "pgd-10 (597 images, one batch)": lambda: evaluate_evasion(model, test_x, test_y, [0.1], attack="pgd",
                                                                  steps=10, batch_size=597),
        "fgsm (597 images, batch 256, 3 eps)": lambda: evaluate_evasion(model, test_x, test_y, [0.01, 0.03, 0.1],
                                                                       attack="fgsm", batch_size=256),
    }
    print(f"{'run':<52} {'forward calls':>13} {'images':>8} {'backward':>8} {'host syncs':>10} {'CPU s':>6}")
    for name, run in runs.items():
        start = time.perf_counter()
        with count_work(model) as count:
            run()
        print(f"{name:<52} {count.forward_calls:>13} {count.forward_images:>8} {count.backward_passes:>8} "
              f"{count.host_syncs:>10} {time.perf_counter() - start:>6.2f}  {dict(count.syncs)}")
    posteriors = query_target(model, train_x[:600])
    surrogate = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    start = time.perf_counter()
    with count_work(surrogate) as count:
        steal(train_x[:600], posteriors, num_classes=10, surrogate=surrogate, epochs=3)
    print(f"{'steal (600 queries, 3 epochs, batch 128)':<52} {count.forward_calls:>13} {count.forward_images:>8} "
          f"{count.backward_passes:>8} {count.host_syncs:>10} {time.perf_counter() - start:>6.2f}  {dict(count.syncs)}")


def neo_rounds() -> None:
    """NEO's round-by-round search against the exhaustive one on the digits case (this branch only)."""
    from pytest_securitynet.attacks.backdoor import neo

    model, _, test_x, _, triggered = _digits_case()
    print(f"{'inputs':<10} {'blocks_per_round':>16} {'confirmed':>9} {'blocks probed':>13} {'images':>7}")
    for name, inputs in (("triggered", triggered), ("clean", None)):
        for rounds in (None, 10, 1):
            with count_work(model) as count:
                result = neo(model, test_x, inputs_to_score=inputs, n_inputs=300, block_size=2, device="cpu",
                             seed=0, blocks_per_round=rounds)
            print(f"{name:<10} {str(rounds):>16} {result.confirmed_fraction:>9.3f} {result.blocks_probed:>13} "
                  f"{count.forward_images:>7}")


if __name__ == "__main__":
    neo_rounds() if sys.argv[1:] == ["neo-rounds"] else main()
