"""The demo catalog's models: trained by the harness on first use and cached by their settings."""

from __future__ import annotations

import hashlib
import json
import logging

import torch
from torch import nn
from torch.nn import functional as F

from pytest_securitynet.zoo.architectures import Normalized, RBFNet, build
from pytest_securitynet.catalog.entries import Catalog, ModelEntry
from pytest_securitynet.zoo.datasets import load_dataset
from pytest_securitynet.zoo.store import FileStore, atomic_path

log = logging.getLogger(__name__)

RECIPE_VERSION = 2
"""Part of the cache key: 2 seeds the initial weights too (models cached by version 1 are retrained)."""


def demo_network(entry: ModelEntry, catalog: Catalog, store: FileStore) -> nn.Module:
    """The trained network of a `source = "demo"` entry (without its preprocessing wrapper)."""
    recipe = {k: entry.raw.get(k) for k in ("builder", "builder_args", "train", "preprocess", "dataset")}
    recipe["recipe_version"] = RECIPE_VERSION
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    cached = store.path("weights", "demo", f"{entry.id}-{digest}.pt")
    with store.lock("weights", "demo", entry.id), torch.random.fork_rng(devices=[]):
        # Seeded from the recipe (initial weights included) and without touching the caller's RNG:
        # the same recipe trains the same model in any process.
        torch.manual_seed(entry.raw.get("train", {}).get("seed", 0))
        net = build(entry.raw["builder"], **entry.raw.get("builder_args", {}))
        if cached.exists():
            net.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
            return net
        log.info("training demo model %s (once; cached at %s)", entry.id, cached)
        data = load_dataset(catalog.dataset(entry.dataset), store)
        train_demo(net, entry, data.train_images, data.train_labels)
        with atomic_path(cached) as tmp:
            torch.save(net.state_dict(), tmp)
    return net


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
    model.train()
    for _ in range(cfg["epochs"]):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            optimiser.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), labels[idx]).backward()
            optimiser.step()
    model.eval()


def _place_rbf_centres(net: RBFNet, model: Normalized, x: torch.Tensor, width_factor: float) -> None:
    """Centres on the (normalised) training images; kernel width a fraction of the median nearest-neighbour distance."""
    with torch.no_grad():
        flat = ((x - model.mean) / model.std).flatten(1)
        net.centers.copy_(flat[: len(net.centers)])
        dist = torch.cdist(flat, flat)
        dist.fill_diagonal_(float("inf"))
        net.width.fill_(width_factor * dist.min(dim=1).values.median().item())
