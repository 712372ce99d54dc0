"""The demo catalog's models: trained by the harness on first use and cached by their settings.

The cache file's name carries a digest of the entry's recipe and of its dataset's decoding key, so a
changed recipe or dataset trains again. A damaged cache file is trained again with a warning;
reading a cached model takes no lock and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pytest_securitynet.zoo.architectures import Normalized, RBFNet, build
from pytest_securitynet.catalog.entries import Catalog, ModelEntry
from pytest_securitynet.errors import UnreadableFileError, UnsafeCheckpointError
from pytest_securitynet.zoo.checkpoints import first_line, safe_load
from pytest_securitynet.zoo.datasets import decoded_key, load_dataset
from pytest_securitynet.zoo.members import member_indices
from pytest_securitynet.zoo.store import FileStore

log = logging.getLogger(__name__)


def demo_network(entry: ModelEntry, catalog: Catalog, store: FileStore) -> nn.Module:
    """The trained network of a `source = "demo"` entry (without its preprocessing wrapper)."""
    dataset = catalog.dataset(entry.dataset)
    recipe = {k: entry.raw.get(k) for k in ("builder", "builder_args", "train", "preprocess", "dataset")}
    recipe["data"] = decoded_key(dataset)
    if entry.members is not None:
        recipe["members"] = entry.members  # trained on the named training members only
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    cached = store.cache_dir / "weights" / "demo" / f"{entry.id}-{digest}.pt"
    net = build(entry.raw["builder"], **entry.raw.get("builder_args", {}))
    if _load_cached(net, cached, entry)[0]:
        return net
    with store.lock("weights", "demo", entry.id):
        loaded, damaged = _load_cached(net, cached, entry)  # trained by another process meanwhile?
        if loaded:
            return net
        if damaged is not None:
            warnings.warn(f"{damaged} Training demo model {entry.id!r} again.", UserWarning, stacklevel=2)
        torch.manual_seed(entry.raw["train"].get("seed", 0))  # the initial weights too: one model per recipe
        net = build(entry.raw["builder"], **entry.raw.get("builder_args", {}))
        log.info("training demo model %s (once; cached at %s)", entry.id, cached)
        data = load_dataset(dataset, store)
        rows = member_indices(entry, dataset, store)
        if rows is None:
            train_demo(net, entry, data.train_images, data.train_labels)
        else:
            train_demo(net, entry, data.train_images[rows], data.train_labels[rows])
        store.replace_version(store.path("weights", "demo", cached.name), lambda tmp: torch.save(net.state_dict(), tmp),
                              re.compile(rf"{re.escape(entry.id)}-[0-9a-f]{{12}}\.pt"))
    return net


def _load_cached(net: nn.Module, path: Path, entry: ModelEntry) -> tuple[bool, Exception | None]:
    """Load the cached weights into `net`: (True, None), (False, None) when absent, or (False, the
    error) when the file is damaged."""
    if not path.is_file():
        return False, None
    what = f"trained weights of demo model {entry.id}"
    try:
        net.load_state_dict(safe_load(path, what, advice=""))
    except (UnreadableFileError, UnsafeCheckpointError) as exc:
        return False, exc
    except (RuntimeError, TypeError, AttributeError) as exc:  # not a state dict of this network
        return False, UnreadableFileError(f"cannot use {path} ({what}): {first_line(exc)}.")
    return True, None


def train_demo(net: nn.Module, entry: ModelEntry, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Train `net` in place on uint8 `images` with the entry's `train` settings (CPU, seeded)."""
    cfg = entry.raw["train"]
    torch.manual_seed(cfg.get("seed", 0))
    pre = entry.preprocess
    model = Normalized(net, pre["mean"], pre["std"])
    x = images.float() / 255
    if isinstance(net, RBFNet):
        _place_rbf_centres(net, model, x, cfg["width_factor"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0))
    batch = cfg.get("batch_size") or len(x)
    generator = torch.Generator().manual_seed(cfg.get("seed", 0))
    adversarial = _pgd_examples(cfg["adversarial_eps"], cfg.get("adversarial_steps", 5)) if "adversarial_eps" in cfg else None
    model.train()
    for _ in range(cfg["epochs"]):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            batch_x = x[idx] if adversarial is None else adversarial(model, x[idx], labels[idx], generator)
            optimiser.zero_grad(set_to_none=True)
            F.cross_entropy(model(batch_x), labels[idx]).backward()
            optimiser.step()
    model.eval()


def _pgd_examples(eps: float, steps: int):
    """Adversarial training's inner maximisation: L-inf PGD on the current model (in eval mode, so
    the attack's passes leave batch-norm statistics alone), seeded through the training generator."""
    from pytest_securitynet.attacks.evasion import pgd_linf

    def examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        model.eval()
        adversarial = pgd_linf(model, x, y, eps, steps=steps, step_size=2.5 * eps / steps, generator=generator)
        model.train()
        return adversarial

    return examples


def _place_rbf_centres(net: RBFNet, model: Normalized, x: torch.Tensor, width_factor: float) -> None:
    """Centres on the (normalised) training images; kernel width a fraction of the median nearest-neighbour distance."""
    with torch.no_grad():
        flat = ((x - model.mean) / model.std).flatten(1)
        net.centers.copy_(flat[: len(net.centers)])
        dist = torch.cdist(flat, flat)
        dist.fill_diagonal_(float("inf"))
        net.width.fill_(width_factor * dist.min(dim=1).values.median().item())
