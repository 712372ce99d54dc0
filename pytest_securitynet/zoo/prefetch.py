"""Fetch the weights and data a selection of catalog models needs into the cache, before a run.

The files come from the resolver's plans, the same ones loading uses. Every needed file is looked
for first (cache, then `SECURITYNET_MIRROR` directories). Offline, a selection with missing files
fails at once, naming each missing file and where to get it, and downloads nothing. Online, the
missing files are fetched through the file store (checked against the catalog's sha256, or the
upstream checksum the resolver knows). RobustBench entries' files are looked for in the same
places, and fetched by the robustbench package's own loader (Google Drive), which the store cannot
do. Entries marked `unavailable` (or RobustBench's without its package) are listed with their
reason; datasets whose decoded tensors are cached need no raw files.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from pytest_securitynet.catalog.entries import Catalog, DatasetEntry, ModelEntry
from pytest_securitynet.errors import CatalogError, MissingFileError, SecurityNetError
from pytest_securitynet.zoo.datasets import decoded_path
from pytest_securitynet.zoo.resolver import resolve_dataset, resolve_model
from pytest_securitynet.zoo.robustbench import robustbench_unusable, weight_needs
from pytest_securitynet.zoo.store import FileStore, Need


@dataclass
class Status:
    """One needed file and the copy found in the cache or a mirror (None: missing); `loaded_by`: the
    entry whose package loader fetches it (RobustBench's), where the store cannot."""

    need: Need
    found: Path | None
    loaded_by: ModelEntry | None = None

    @property
    def present(self) -> bool:
        return self.found is not None

    @property
    def name(self) -> str:
        return self.need.name

    @property
    def what(self) -> str:
        return self.need.purpose

    @property
    def source(self) -> str:
        return self.need.source


def select(catalog: Catalog, patterns: Iterable[str]) -> list[ModelEntry]:
    """Models whose id matches any pattern (shell-style: `cifar10-*-pytorchcv`), or whose dataset is a pattern."""
    patterns = list(patterns)
    chosen = [e for e in catalog.models.values()
              if any(fnmatch.fnmatchcase(e.id, p) or e.dataset == p for p in patterns)]
    if not chosen:
        raise CatalogError(f"no catalog model matches {' '.join(patterns)!r}; see `securitynet catalog list`")
    return chosen


def select_by_keyword(catalog: Catalog, expression: str) -> list[ModelEntry]:
    """Models some test of which `pytest -k EXPRESSION` may select, judged on the model's names alone:
    a word in its id or keywords is true, a word only other models' names hold is false, and any other
    word (a benchmark's or setting's) may go either way."""
    from pytest_securitynet.plugin.selection import compile_keyword, model_may_match

    compiled = compile_keyword(expression)
    if compiled is None:
        raise CatalogError(f"-k {expression!r}: not a valid -k expression")
    names = {e.id: [e.id, *e.keywords()] for e in catalog.models.values()}
    every = sorted({n for own in names.values() for n in own})
    chosen = [e for e in catalog.models.values() if model_may_match(compiled, names[e.id], every)]
    if not chosen:
        raise CatalogError(f"-k {expression!r} selects no catalog model; see `securitynet catalog list`")
    return chosen


def needs_of(entries: Iterable[ModelEntry], catalog: Catalog, store: FileStore,
             dataset_overrides: dict[str, str] | None = None,
             loaders: dict[Need, ModelEntry] | None = None) -> tuple[list[Need], dict[str, str]]:
    """Every file the entries need (weights, then each dataset once), and the unavailable ones' reasons.
    Files a package's loader fetches are added to `loaders` (when given) with their entry."""
    needs: list[Need] = []
    unavailable: dict[str, str] = {}
    datasets: dict[str, DatasetEntry] = {}
    for entry in entries:
        reason = entry.raw.get("unavailable") or robustbench_unusable(entry)
        if reason:
            unavailable[entry.id] = reason
            continue
        if entry.source_kind == "robustbench":
            files = weight_needs(entry)
            needs.extend(files)
            if loaders is not None:
                loaders.update(dict.fromkeys(files, entry))
        else:
            needs.extend(resolve_model(entry).needs)
        dataset_id = (dataset_overrides or {}).get(entry.dataset, entry.dataset)
        datasets.setdefault(dataset_id, catalog.dataset(dataset_id))
    for dataset in datasets.values():
        if not decoded_path(dataset, store).exists():
            needs.extend(resolve_dataset(dataset).needs)
    return list(dict.fromkeys(needs)), unavailable


def plan(entries: Iterable[ModelEntry], catalog: Catalog, store: FileStore,
         dataset_overrides: dict[str, str] | None = None) -> tuple[list[Status], dict[str, str]]:
    """What the entries need, each with the copy found (or not), and the unavailable ones' reasons."""
    loaders: dict[Need, ModelEntry] = {}
    needs, unavailable = needs_of(entries, catalog, store, dataset_overrides, loaders)
    return [Status(need, store.find(need), loaders.get(need)) for need in needs], unavailable


def missing_message(missing: list[Status], store: FileStore) -> str:
    mirrors = os.pathsep.join(str(m) for m in store.mirrors) or "(none set)"
    lines = [f"offline mode is on and {len(missing)} file(s) are missing from the cache ({store.cache_dir}) "
             f"and every SECURITYNET_MIRROR directory (now: {mirrors}):"]
    lines += [f"  {s.name} ({s.what}): {s.source}" for s in missing]
    lines.append("Fetch them online with `securitynet catalog prefetch`, or put them into a mirror directory.")
    return "\n".join(lines)


def prefetch(statuses: list[Status], store: FileStore, report: Callable[[str], None] = print) -> list[Status]:
    """Fetch what is missing (raising `MissingFileError` offline, before any download)."""
    missing = [s for s in statuses if not s.present]
    if missing and store.offline:
        raise MissingFileError(missing_message(missing, store))
    loaded: set[str] = set()
    for status in missing:
        report(f"fetching {status.name} ({status.what})")
        if status.loaded_by is None:
            status.found = store.get(status.need)
            continue
        if status.loaded_by.id not in loaded:  # the loader fetches every file of its entry at once
            _load_with_package(status, store)
            loaded.add(status.loaded_by.id)
        status.found = store.find(status.need)
    return missing


def _load_with_package(status: Status, store: FileStore) -> None:
    """Have robustbench's loader fetch (and load) an entry's files; its own failures (a download
    error, a damaged checkpoint) become one `MissingFileError` naming the file and where it goes."""
    from pytest_securitynet.zoo.robustbench import DOWNLOAD_HOST, load_robustbench

    try:
        load_robustbench(status.loaded_by, store)
    except (SecurityNetError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - a third-party loader raises anything
        raise MissingFileError(
            f"{status.name} ({status.what}): robustbench could not fetch or load it from {DOWNLOAD_HOST} "
            f"({type(exc).__name__}: {exc}); put the file into {store.cache_dir / status.need.subdir} or a "
            f"SECURITYNET_MIRROR directory") from exc
