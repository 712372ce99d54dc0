"""Resolve, then load: a catalog entry becomes a `Plan`, the files it needs and the loader that reads them.

One function per source kind says which files an entry needs (name, URLs, checksum, cache
subdirectory); `FileStore.get` finds each one (cache, mirrors, archive, URL). Loading
(`weights.load_model`, `datasets.load_dataset`), `securitynet catalog prefetch` and the offline
messages all start from the same plan, so they cannot disagree on what an entry needs.
No file is touched here.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from pytest_securitynet.catalog.entries import DatasetEntry, ModelEntry
from pytest_securitynet.errors import CatalogError
from pytest_securitynet.zoo.store import Archive, Digest, FileStore, Need

PYTORCHCV_REPO = "https://github.com/osmr/imgclsmob"
HF_HUB = "https://huggingface.co"


@dataclass(frozen=True)
class Plan:
    """How to load an entry: the loader (a key of the loaders' table) and its files, in the loader's order."""

    entry_id: str
    loader: str
    needs: tuple[Need, ...] = ()


def resolve_model(entry: ModelEntry) -> Plan:
    """The files a model's weights need and the loader that builds it from them."""
    if entry.raw.get("unavailable"):
        raise CatalogError(f"model {entry.id!r} cannot be loaded: {entry.raw['unavailable']}")
    resolve = _MODEL_SOURCES.get(entry.source_kind)
    if resolve is None:
        raise CatalogError(f"{entry.origin}: model {entry.id!r}: field source: unsupported {entry.source!r}")
    return resolve(entry)


def resolve_dataset(entry: DatasetEntry) -> Plan:
    """The raw files a dataset is decoded from and the decoder that reads them."""
    resolve = _DATASET_SOURCES.get(entry.source)
    if resolve is None:
        raise CatalogError(f"{entry.origin}: dataset {entry.id!r}: field source: unsupported {entry.source!r}")
    return resolve(entry)


def fetch(plan: Plan, store: FileStore) -> list[Path]:
    """Verified local paths of a plan's files, in order (downloading only when online)."""
    return [store.get(need) for need in plan.needs]


def url_file_name(url: str) -> str:
    return os.path.basename(urlparse(url).path)


# --- weights ------------------------------------------------------------------------------------

def _weights(entry: ModelEntry) -> str:
    return f"weights of {entry.id}"


def _from_url(entry: ModelEntry) -> Plan:
    name = entry.raw.get("pinned_file") or url_file_name(entry.source)
    if name != url_file_name(entry.source):
        # Pinned by hand (catalog/pins.py): the source is a page, not this file; the cache or a mirror has it.
        need = Need(name, _weights(entry), "weights", (), entry.raw.get("sha256"),
                    hint=f"pinned in {entry.raw.get('pinned_in')}; obtained by hand from {entry.source}")
    else:
        need = Need(name, _weights(entry), "weights", (entry.source,), entry.raw.get("sha256"))
    return Plan(entry.id, "builder", (need,))


def _from_file(entry: ModelEntry) -> Plan:
    path = Path(entry.source.removeprefix("file:")).expanduser()
    if not path.is_absolute():
        path = Path(entry.origin).parent / path
    need = Need(path.name, _weights(entry), sha256=entry.raw.get("sha256"), at=path,
                hint=f"named by field source in {entry.origin}")
    return Plan(entry.id, "builder", (need,))


def _from_package(entry: ModelEntry) -> Plan:
    """`package:NAME/PATH`: a file an installed Python package ships (pyautoattack's example model),
    checked against the catalog's sha256 like any other file."""
    package, _, inner = entry.source.removeprefix("package:").partition("/")
    root = installed_package_dir(package)
    path = (root or Path(package)) / inner
    hint = (f"installed with the Python package {package!r}" if root is not None
            else f"the Python package {package!r} is not installed (pip install {package})")
    need = Need(path.name, _weights(entry), sha256=entry.raw.get("sha256"), at=path, hint=hint)
    return Plan(entry.id, "builder", (need,))


def installed_package_dir(package: str) -> Path | None:
    """The directory of an installed package, found without importing it; None when absent."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def _from_robustbench(entry: ModelEntry) -> Plan:
    """Built and loaded by the robustbench package (zoo/robustbench.py), which finds or downloads its
    files itself; the store is not asked for them here."""
    return Plan(entry.id, "robustbench")


def _from_demo(entry: ModelEntry) -> Plan:
    return Plan(entry.id, "demo")  # trained by the harness from its dataset, cached by its recipe


def _from_pytorchcv(entry: ModelEntry) -> Plan:
    """pytorchcv's own release file, a zip holding `<name>-<error>-<sha1[:8]>.pth`, checked by its sha1."""
    name = entry.source.removeprefix("pytorchcv:")
    error, sha1, tag = _pytorchcv_release(name)
    filename = f"{name}-{error}-{sha1[:8]}.pth"
    sha256 = entry.raw.get("sha256")
    need = Need(filename, _weights(entry), "weights/pytorchcv",
                (f"{PYTORCHCV_REPO}/releases/download/{tag}/{filename}.zip",),
                sha256=sha256, digest=None if sha256 else Digest("sha1", sha1),
                archive=Archive(f"{filename}.zip"))
    return Plan(entry.id, "pytorchcv", (need,))


@functools.lru_cache(maxsize=None)
def _pytorchcv_release(name: str) -> tuple[str, str, str]:
    """pytorchcv's (error, sha1, release tag) of a model; its table is parsed on every call, so keep it."""
    from pytorchcv.models.common import model_store

    error, sha1, tag = model_store.get_model_name_suffix_data(name)
    return error, sha1, tag


def _from_torchvision(entry: ModelEntry) -> Plan:
    """torchvision's weights file; without a catalog sha256, the sha256 prefix in its torch.hub name."""
    import torchvision

    weights = torchvision.models.get_weight(entry.source.split(":")[2])
    filename = url_file_name(weights.url)
    sha256 = entry.raw.get("sha256")
    prefix = filename.rsplit("-", 1)[-1].split(".")[0]
    need = Need(filename, _weights(entry), "weights", (weights.url,), sha256=sha256,
                digest=None if sha256 else Digest("sha256", prefix, prefix=True))
    return Plan(entry.id, "torchvision", (need,))


def _from_timm(entry: ModelEntry) -> Plan:
    """timm's weights from the Hugging Face hub (`model.safetensors`) or timm's URL, saved as
    `<name>.safetensors` (or `.pth`); a mirror copy may have either suffix. The catalog's sha256 is checked."""
    from timm.models import get_pretrained_cfg

    name = entry.source.removeprefix("timm:")
    stem = name.replace("/", "_")
    cfg = get_pretrained_cfg(name) if "/" not in name else None
    urls: tuple[str, ...] = ()
    suffix = ".safetensors"
    if cfg is not None and cfg.hf_hub_id:
        remote = cfg.hf_hub_filename or "model.safetensors"
        urls, suffix = (f"{HF_HUB}/{cfg.hf_hub_id}/resolve/main/{remote}",), Path(remote).suffix
    elif cfg is not None and cfg.url:
        urls, suffix = (cfg.url,), Path(url_file_name(cfg.url)).suffix
    filename = f"{stem}{suffix}"
    aliases = tuple(f"{stem}{s}" for s in (".safetensors", ".pth") if f"{stem}{s}" != filename)
    need = Need(filename, _weights(entry), "weights/timm", urls, entry.raw.get("sha256"), aliases=aliases,
                hint=f"timm names no download for {name!r}")
    return Plan(entry.id, "timm", (need,))


_MODEL_SOURCES: dict[str, Callable[[ModelEntry], Plan]] = {
    "url": _from_url,
    "file": _from_file,
    "package": _from_package,
    "robustbench": _from_robustbench,
    "demo": _from_demo,
    "pytorchcv": _from_pytorchcv,
    "torchvision": _from_torchvision,
    "timm": _from_timm,
}


# --- data ---------------------------------------------------------------------------------------

def _data(entry: DatasetEntry) -> str:
    return f"data of {entry.id}"


def _from_digits(entry: DatasetEntry) -> Plan:
    return Plan(entry.id, "sklearn-digits")  # bundled with scikit-learn


def _from_image_archive(entry: DatasetEntry) -> Plan:
    raw = entry.raw
    need = Need(raw["file"], _data(entry), "files", (raw["url"],) if raw.get("url") else (), raw.get("sha256"))
    return Plan(entry.id, "image-folder-archive", (need,))


def _from_torchvision_dataset(entry: DatasetEntry) -> Plan:
    """The archive (CIFAR) or per-split files (SVHN) torchvision's class reads, checked by its md5."""
    import torchvision

    cls = getattr(torchvision.datasets, entry.raw["torchvision_class"], None)
    if cls is None:
        raise CatalogError(f"{entry.origin}: dataset {entry.id!r}: field torchvision_class: "
                           f"torchvision.datasets has no {entry.raw['torchvision_class']!r}")
    if getattr(cls, "filename", None) and getattr(cls, "url", None):
        files = [(cls.url, cls.filename, getattr(cls, "tgz_md5", None))]
    elif isinstance(getattr(cls, "split_list", None), dict):  # SVHN: one file per split
        files = [tuple(cls.split_list[s]) for s in ("train", "test")]
    else:
        raise CatalogError(
            f"{entry.origin}: dataset {entry.id!r}: the harness knows the files of torchvision classes with "
            f"`filename` and `url` (CIFAR10, CIFAR100) or a `split_list` (SVHN), not {cls.__name__}")
    needs = tuple(Need(name, _data(entry), "torchvision", (url,), entry.raw.get("sha256") if len(files) == 1 else None,
                       digest=Digest("md5", md5) if md5 else None) for url, name, md5 in files)
    return Plan(entry.id, "torchvision", needs)


def _from_medmnist(entry: DatasetEntry) -> Plan:
    """The MedMNIST `.npz` (Zenodo record 10519652): checked against the catalog's sha256 where it
    records one, else a download against the medmnist package's MD5 (as the package itself does)."""
    raw = entry.raw
    filename = raw.get("file", f"{raw['flag']}.npz")
    digest = None
    if not raw.get("sha256") and filename == f"{raw['flag']}.npz":
        try:
            from medmnist import INFO
        except ImportError:
            INFO = {}
        md5 = INFO.get(raw["flag"], {}).get("MD5")
        digest = Digest("md5", md5, downloads_only=True) if md5 else None
    need = Need(filename, _data(entry), "medmnist", (raw["url"],) if raw.get("url") else (), raw.get("sha256"),
                digest=digest, hint="Zenodo record 10519652")
    return Plan(entry.id, "medmnist", (need,))


def _from_image_folder(entry: DatasetEntry) -> Plan:
    """A folder in the cache root or a mirror (CUB-200-2011, ImageNet); else its archive, if the entry
    names one, unpacked into the cache."""
    raw = entry.raw
    archive = Archive(raw["file"], raw.get("sha256"), "files") if raw.get("file") else None
    need = Need(raw["folder"], _data(entry), "", (raw["url"],) if raw.get("url") and archive else (),
                archive=archive, folder=True,
                hint=f"Put a copy (layout: {raw['layout']}) into the cache directory or a SECURITYNET_MIRROR directory.")
    return Plan(entry.id, "image-folder", (need,))


_DATASET_SOURCES: dict[str, Callable[[DatasetEntry], Plan]] = {
    "sklearn-digits": _from_digits,
    "image-folder-archive": _from_image_archive,
    "torchvision": _from_torchvision_dataset,
    "medmnist": _from_medmnist,
    "image-folder": _from_image_folder,
}
