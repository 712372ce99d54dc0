"""Fetch the weights and data a selection of catalog models needs into the cache, before a run.

Every needed file is checked first (cache, then `SECURITYNET_MIRROR` directories). Offline, a
selection with missing files fails at once, naming each missing file and where to get it, and
downloads nothing. Online, the missing files are downloaded with a progress bar: URL weights and
data archives through the harness's file store (sha256-checked where the catalog records one);
pytorchcv weights from pytorchcv's own model store (its release URL and sha1) into the cache
directory the harness loads them from. Entries marked `unavailable` are listed with their reason.
"""

from __future__ import annotations

import fnmatch
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlparse

from pytest_securitynet.catalog.entries import Catalog, DatasetEntry, ModelEntry
from pytest_securitynet.errors import CatalogError, MissingFileError
from pytest_securitynet.zoo.store import FileStore

PYTORCHCV_REPO = "https://github.com/osmr/imgclsmob"


@dataclass
class Need:
    """One file (or folder) a model needs: whether it is here, and how to get it."""

    what: str  # e.g. "weights of cifar10-resnet20-pytorchcv"
    name: str  # file or folder name
    present: bool
    source: str  # URL, or how to get it when there is none
    fetch: Callable[[], object] | None  # downloads it (None: cannot be downloaded)


def select(catalog: Catalog, patterns: Iterable[str]) -> list[ModelEntry]:
    """Models whose id matches any pattern (shell-style: `cifar10-*-pytorchcv`), or whose dataset is a pattern."""
    patterns = list(patterns)
    chosen = [e for e in catalog.models.values()
              if any(fnmatch.fnmatchcase(e.id, p) or e.dataset == p for p in patterns)]
    if not chosen:
        raise CatalogError(f"no catalog model matches {' '.join(patterns)!r}; see `securitynet catalog list`")
    return chosen


def plan(entries: Iterable[ModelEntry], catalog: Catalog, store: FileStore,
         dataset_overrides: dict[str, str] | None = None) -> tuple[list[Need], dict[str, str]]:
    """Everything the entries need (weights, then each dataset once) and the unavailable ones' reasons."""
    needs: list[Need] = []
    unavailable: dict[str, str] = {}
    datasets: dict[str, DatasetEntry] = {}
    for entry in entries:
        if entry.raw.get("unavailable"):
            unavailable[entry.id] = entry.raw["unavailable"]
            continue
        needs.extend(weights_needs(entry, store))
        dataset_id = (dataset_overrides or {}).get(entry.dataset, entry.dataset)
        datasets.setdefault(dataset_id, catalog.dataset(dataset_id))
    for dataset in datasets.values():
        needs.extend(dataset_needs(dataset, store))
    return needs, unavailable


def missing_message(missing: list[Need], store: FileStore) -> str:
    mirrors = os.pathsep.join(str(m) for m in store.mirrors) or "(none set)"
    lines = [f"offline mode is on and {len(missing)} file(s) are missing from the cache ({store.cache_dir}) "
             f"and every SECURITYNET_MIRROR directory (now: {mirrors}):"]
    lines += [f"  {n.name} ({n.what}): {n.source}" for n in missing]
    lines.append("Fetch them online with `securitynet catalog prefetch`, or put them into a mirror directory.")
    return "\n".join(lines)


def prefetch(needs: list[Need], store: FileStore, report: Callable[[str], None] = print) -> list[Need]:
    """Download what is missing (raising `MissingFileError` offline, before any download)."""
    missing = [n for n in needs if not n.present]
    if missing and store.offline:
        raise MissingFileError(missing_message(missing, store))
    for need in missing:
        if need.fetch is None:
            raise MissingFileError(f"{need.name} ({need.what}) cannot be downloaded: {need.source}")
        report(f"fetching {need.name} ({need.what})")
        need.fetch()
        need.present = True
    return missing


# --- weights ----------------------------------------------------------------------------------

def weights_needs(entry: ModelEntry, store: FileStore) -> list[Need]:
    kind = entry.source_kind
    what = f"weights of {entry.id}"
    if kind == "pytorchcv":
        return [_pytorchcv_need(entry, store)]
    if kind == "url":
        filename = os.path.basename(urlparse(entry.source).path)
        return [_store_need(store, what, filename, entry.raw.get("sha256"), entry.source, "weights")]
    if kind == "torchvision":
        import torchvision

        weights = torchvision.models.get_weight(entry.source.split(":")[2])
        filename = os.path.basename(urlparse(weights.url).path)
        return [_store_need(store, what, filename, entry.raw.get("sha256"), weights.url, "weights")]
    if kind == "file":
        path = Path(entry.source.removeprefix("file:")).expanduser()
        if not path.is_absolute():
            path = Path(entry.origin).parent / path
        return [Need(what, path.name, path.is_file(), f"the local file {path} named by the catalog entry", None)]
    if kind == "timm":
        return [_timm_need(entry, store)]
    return []  # demo models are trained by the harness


def pytorchcv_file_name(name: str) -> tuple[str, str, str]:
    """pytorchcv's weights file name for model `name`, its sha1 and its release tag, from its own store."""
    from pytorchcv.models.common import model_store

    error, sha1, tag = model_store.get_model_name_suffix_data(name)
    return f"{name}-{error}-{sha1[:8]}.pth", sha1, tag


def pytorchcv_root(store: FileStore) -> Path:
    """The cache directory pytorchcv weights live in (the one `models.py` loads them from)."""
    return store.path("weights", "pytorchcv", "x").parent


def _pytorchcv_need(entry: ModelEntry, store: FileStore) -> Need:
    name = entry.source.removeprefix("pytorchcv:")
    filename, sha1, tag = pytorchcv_file_name(name)
    root = pytorchcv_root(store)
    url = f"{PYTORCHCV_REPO}/releases/download/{tag}/{filename}.zip"
    present = (root / filename).exists() or any((m / filename).is_file() for m in store.mirrors)

    def fetch() -> Path:
        from pytorchcv.models.common.model_store import _check_sha1

        archive = store.fetch(f"{filename}.zip", None, url, subdir="downloads")
        with zipfile.ZipFile(archive) as zf:
            zf.extract(filename, root)
        if not _check_sha1(str(root / filename), sha1):
            (root / filename).unlink()
            raise MissingFileError(f"{filename} from {url} does not match the sha1 pytorchcv records ({sha1})")
        archive.unlink(missing_ok=True)
        return root / filename

    return Need(f"weights of {entry.id}", filename, present, url, fetch)


def _timm_need(entry: ModelEntry, store: FileStore) -> Need:
    name = entry.source.removeprefix("timm:")
    stem = name.replace("/", "_")
    present = any((m / f"{stem}{s}").is_file() for m in store.mirrors for s in (".safetensors", ".pth"))

    def fetch() -> None:
        import timm

        os.environ.setdefault("HF_HOME", str(store.path("huggingface", "x").parent))
        timm.create_model(name, pretrained=True)

    return Need(f"weights of {entry.id}", f"{stem}.safetensors", present, f"timm's hub for {name!r}", fetch)


def _store_need(store: FileStore, what: str, filename: str, sha256: str | None, url: str | None,
                subdir: str) -> Need:
    present = store.path(subdir, filename).exists() or any((m / filename).is_file() for m in store.mirrors)
    fetch = (lambda: store.fetch(filename, sha256, url, subdir=subdir)) if url else None
    return Need(what, filename, present, url or "no public URL is known", fetch)


# --- data -------------------------------------------------------------------------------------

def dataset_needs(dataset: DatasetEntry, store: FileStore) -> list[Need]:
    """The raw files of a dataset, unless its decoded tensors are already cached."""
    what = f"data of {dataset.id}"
    if store.path("datasets", f"{dataset.id}.pt").exists() or dataset.source == "sklearn-digits":
        return []

    def decode() -> object:
        from pytest_securitynet.zoo.datasets import load_dataset

        return load_dataset(dataset, store)

    raw = dataset.raw
    if dataset.source == "image-folder-archive":
        need = _store_need(store, what, raw["file"], raw.get("sha256"), raw.get("url"), "files")
        return [need]
    if dataset.source == "torchvision":
        import torchvision

        cls = getattr(torchvision.datasets, raw["torchvision_class"])
        root = store.path("torchvision", "x").parent
        names = _torchvision_files(cls)
        present = bool(names) and all((root / n).exists() or any((m / n).is_file() for m in store.mirrors) for n in names)
        return [Need(what, ", ".join(names) or cls.__name__, present, f"torchvision's {cls.__name__} download", decode)]
    if dataset.source == "medmnist":
        filename = raw.get("file", f"{raw['flag']}.npz")
        present = store.path("medmnist", filename).exists() or any((m / filename).is_file() for m in store.mirrors)
        return [Need(what, filename, present, raw.get("url", "the medmnist package's download"), decode)]
    if dataset.source == "image-folder":
        folder = raw["folder"]
        roots = [store.cache_dir, *store.mirrors]
        present = any((r / folder).is_dir() for r in roots) or any(
            "file" in raw and (r / raw["file"]).is_file() for r in roots) or (
            "file" in raw and store.path("files", raw["file"]).exists())
        how = raw.get("url") or f"a local copy only: put a `{folder}` folder into the cache or a SECURITYNET_MIRROR directory"
        return [Need(what, folder, present, how, decode if raw.get("url") else None)]
    return []


def _torchvision_files(cls) -> list[str]:
    if getattr(cls, "filename", None):
        return [cls.filename]
    split_list = getattr(cls, "split_list", None)  # SVHN: one .mat file per split
    if isinstance(split_list, dict):
        return [split_list[s][1] for s in ("train", "test") if s in split_list]
    return []
