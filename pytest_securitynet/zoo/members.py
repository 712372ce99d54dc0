"""Training members a catalog entry names (`members_file`), as indices into its dataset's training split.

Indexed datasets list indices, checked when the catalog loads (`catalog.entries.read_members_file`).
Image-folder archives list file names; they become indices through the archive's index, which is
read once per archive and kept in the cache directory. The harness checks them at start-up where
the archive is already at hand, and in any case before the dataset is used.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import torch

from pytest_securitynet.catalog.entries import Catalog, DatasetEntry, ModelEntry
from pytest_securitynet.errors import CatalogError, MissingFileError
from pytest_securitynet.zoo.datasets import archive_split_names
from pytest_securitynet.zoo.store import FileStore

log = logging.getLogger(__name__)


def _archive_index(dataset: DatasetEntry, store: FileStore) -> dict[str, int]:
    """`<class>/<file>` -> index in the training split, from a JSON copy in the cache keyed by the archive's sha256."""
    cached = store.path("members", f"{dataset.id}-{dataset.raw['sha256'][:16]}.json")
    if cached.exists():
        names = json.loads(cached.read_text(encoding="utf-8"))
    else:
        names = archive_split_names(dataset, store, "train")
        store.write(cached, lambda tmp: tmp.write_text(json.dumps(names), encoding="utf-8"))
    return {name: index for index, name in enumerate(names)}


def member_indices(entry: ModelEntry, dataset: DatasetEntry, store: FileStore) -> torch.Tensor | None:
    """Sorted indices into `dataset`'s training split of the entry's named members; None if it names none.

    Raises CatalogError naming the members file and the first sample the split does not hold.
    """
    members = entry.members
    if members is None:
        return None
    if dataset.source == "image-folder-archive":
        index = _archive_index(dataset, store)
        missing = [name for name in members if name not in index]
        if missing:
            raise CatalogError(
                f"{entry.raw['members_path']}: sample {missing[0]!r} is not in the train split of dataset "
                f"{dataset.id!r} ({len(missing)} of {len(members)} samples missing) "
                f"({entry.origin}: model {entry.id!r})")
        values = [index[name] for name in members]
    else:
        values = [int(v) for v in members]
        if max(values) >= dataset.train_size:
            raise CatalogError(f"{entry.raw['members_path']}: sample {max(values)} is not in the train split of "
                               f"dataset {dataset.id!r} ({dataset.train_size} samples) ({entry.origin}: model {entry.id!r})")
    return torch.tensor(sorted(values), dtype=torch.int64)


def check_archive_members(catalog: Catalog, store: FileStore) -> None:
    """Check named archive members of every entry whose archive (or its index) is at hand; nothing is downloaded."""
    store = dataclasses.replace(store, offline=True)
    for entry in catalog.models.values():
        if entry.members is None:
            continue
        dataset = catalog.dataset(entry.dataset)
        if dataset.source != "image-folder-archive":
            continue
        try:
            member_indices(entry, dataset, store)
        except MissingFileError:
            log.debug("archive of %s not at hand; %s's members are checked when it loads", dataset.id, entry.id)
