"""The harness: per-process state of a run (catalog, and caches of models, datasets and posteriors).

One instance lives in each pytest process (controller or xdist worker). Tests are ordered so all
tests of one model run together, so keeping the most recent model is enough to load it once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pytest_securitynet.catalog.pins import apply_pins, pins_path
from pytest_securitynet.catalog.entries import Catalog, DatasetEntry, ModelEntry, load_catalog, catalog_paths
from pytest_securitynet.catalog.policy import check_builders
from pytest_securitynet.harness.data import LabeledSet, SetSizes, make_sets
from pytest_securitynet.zoo.datasets import ImageData, load_dataset
from pytest_securitynet.errors import CatalogError
from pytest_securitynet.harness.settings import Settings
from pytest_securitynet.zoo.members import check_archive_members, member_indices
from pytest_securitynet.zoo.store import default_cache_dir
from pytest_securitynet.zoo.weights import load_model
from pytest_securitynet.zoo.store import FileStore
from pytest_securitynet.harness.target import PosteriorCache

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    entry: ModelEntry
    model: nn.Module
    data: ImageData
    sets: dict[str, LabeledSet]
    posteriors: PosteriorCache


class Harness:
    """Loads catalog models and their data on demand, keeping the current model's state cached."""

    def __init__(self, settings: Settings, device_resolver: Callable[[], torch.device]):
        self.settings = settings
        self._device_resolver = device_resolver
        self._device: torch.device | None = None
        self.files = FileStore(cache_dir=Path(settings.cache_dir or default_cache_dir()),
                               mirrors=list(settings.mirrors), offline=settings.offline)
        self.catalog: Catalog = load_catalog(catalog_paths(settings.catalogs), self.files.cache_dir,
                                             settings.allow_code_builders)
        apply_pins(self.catalog, pins_path(settings.catalogs, settings.pins), settings.pin_on_first_download)
        check_builders(self.catalog, settings.allow_code_builders)
        check_archive_members(self.catalog, self.files)
        self._check_overrides()
        self._current: _Loaded | None = None
        self._datasets: dict[str, ImageData] = {}

    @property
    def device(self) -> torch.device:
        """Resolved on first use, so the controller process never touches a GPU."""
        if self._device is None:
            self._device = self._device_resolver()
        return self._device

    @property
    def device_resolved(self) -> bool:
        return self._device is not None

    def dataset_for(self, entry: ModelEntry) -> DatasetEntry:
        """The dataset a model is evaluated on: its own, or the override the run points it at."""
        return self.catalog.dataset(self.settings.dataset_overrides.get(entry.dataset, entry.dataset))

    def loaded(self, entry: ModelEntry) -> _Loaded:
        if self._current is None or self._current.entry.id != entry.id:
            self._current = None  # free the previous model before loading the next
            # Weights first: a missing or corrupt file is found before a long dataset load.
            model = load_model(entry, self.catalog, self.files).to(self.device)
            dataset = self.dataset_for(entry)
            if entry.members is not None and dataset.id != entry.dataset:
                raise CatalogError(f"{entry.origin}: model {entry.id!r} names its training members in dataset "
                                   f"{entry.dataset!r}; they do not carry over to {dataset.id!r}")
            training_members = member_indices(entry, dataset, self.files)
            data = self._dataset(dataset)
            sizes = SetSizes(members=self.settings.members, limit=self.settings.limit)
            cache = PosteriorCache(model, {"train": len(data.train_labels), "test": len(data.test_labels)},
                                   entry.annotations["num_classes"], self.device, self.settings.batch_size)
            sets = make_sets(data, sizes, self.settings.seed, training_members)
            self._current = _Loaded(entry, model, data, sets, cache)
        return self._current

    def _dataset(self, entry: DatasetEntry) -> ImageData:
        if entry.id not in self._datasets:
            if len(self._datasets) >= 2:
                self._datasets.pop(next(iter(self._datasets)))
            self._datasets[entry.id] = load_dataset(entry, self.files)
        return self._datasets[entry.id]

    def _check_overrides(self) -> None:
        for name, other in self.settings.dataset_overrides.items():
            original, replacement = self.catalog.dataset(name), self.catalog.dataset(other)
            if replacement.family != original.family and replacement.id != original.id:
                raise CatalogError(
                    f"--securitynet-dataset {name}={other}: {other!r} is not a copy of {name!r} "
                    f"(its variant_of is {replacement.raw.get('variant_of')!r})"
                )
