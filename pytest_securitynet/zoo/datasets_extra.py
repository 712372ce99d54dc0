"""Decoders for the SecurityNet database's other datasets: MedMNIST (through the `medmnist`
package) and local image folders (CUB-200-2011, ImageNet-1k).

Each `decode_*` reads the files the resolver planned and returns the same uint8 tensors as
`datasets.py`'s decoders ({train,test}_{images,labels}); `load_*` resolves and fetches first.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from pytest_securitynet.catalog.entries import DatasetEntry
from pytest_securitynet.errors import CatalogError, MissingFileError
from pytest_securitynet.zoo.resolver import fetch, resolve_dataset
from pytest_securitynet.zoo.store import FileStore, link_into

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


# --- MedMNIST ---------------------------------------------------------------------------------

def load_medmnist(entry: DatasetEntry, store: FileStore) -> dict[str, torch.Tensor]:
    """Find (or download) a MedMNIST entry's `.npz` and decode it."""
    return decode_medmnist(entry, fetch(resolve_dataset(entry), store))


def decode_medmnist(entry: DatasetEntry, files: list[Path]) -> dict[str, torch.Tensor]:
    """MedMNIST v2 at 28 px read by the `medmnist` package from a scratch folder holding the `.npz`.
    The validation split is not used: members come from train, non-members from test."""
    try:
        import medmnist
    except ImportError as exc:
        raise MissingFileError(
            f"dataset {entry.id!r} needs the medmnist package (pip install medmnist)"
        ) from exc
    flag = entry.raw["flag"]
    cls = getattr(medmnist, medmnist.INFO[flag]["python_class"])
    out = {}
    with tempfile.TemporaryDirectory(prefix="securitynet-medmnist-") as root:
        link_into(files[0], Path(root), f"{flag}.npz")
        for split in ("train", "test"):
            ds = cls(split=split, root=root, download=False)
            out.update(_medmnist_split(entry, split, ds))
    return out


def _medmnist_split(entry: DatasetEntry, split: str, ds) -> dict[str, torch.Tensor]:
    images = torch.from_numpy(np.ascontiguousarray(ds.imgs)).to(torch.uint8)
    if images.ndim == 4 and images.shape[-1] == 3 and len(entry.input_size) == 3:
        images = images.permute(0, 3, 1, 2).contiguous()  # 2D RGB: N H W C -> N C H W
    else:
        images = images.unsqueeze(1)  # 2D grey N H W, or 3D N D H W -> one channel
    labels = torch.from_numpy(np.asarray(ds.labels).reshape(len(images), -1)[:, 0].astype(np.int64))
    return {f"{split}_images": images, f"{split}_labels": labels}


# --- image folders ----------------------------------------------------------------------------

def load_image_folder(entry: DatasetEntry, store: FileStore) -> dict[str, torch.Tensor]:
    """Find an image-folder entry's folder (or unpack its archive) and decode it."""
    return decode_image_folder(entry, fetch(resolve_dataset(entry), store))


def decode_image_folder(entry: DatasetEntry, files: list[Path]) -> dict[str, torch.Tensor]:
    """A local image folder (`layout` cub200 or train-val), resized (shorter side `resize`) and
    centre-cropped to the entry's input size; `max_train`/`max_test` keep a seeded, class-balanced subset."""
    folder = files[0]
    layout = entry.raw["layout"]
    if layout == "cub200":
        splits = _cub200_files(folder)
    elif layout == "train-val":
        splits = _train_val_files(folder)
    else:
        raise CatalogError(f"{entry.origin}: dataset {entry.id!r}: field layout: unknown layout {layout!r}")
    out = {}
    for split, limit_key in (("train", "max_train"), ("test", "max_test")):
        paths, labels = splits[split]
        if entry.raw.get(limit_key):
            keep = balanced_subset(labels, entry.raw[limit_key], entry.num_classes, seed=entry.raw.get("split_seed", 0))
            paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
        out[f"{split}_images"] = _decode(paths, entry)
        out[f"{split}_labels"] = torch.tensor(labels, dtype=torch.int64)
    return out


def _cub200_files(folder: Path) -> dict[str, tuple[list[Path], list[int]]]:
    def table(name: str) -> dict[str, str]:
        path = folder / name
        if not path.is_file():
            raise CatalogError(f"{folder} is not a CUB-200-2011 folder: {name} is missing")
        return dict(line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())

    images, classes, is_train = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    out: dict[str, tuple[list[Path], list[int]]] = {"train": ([], []), "test": ([], [])}
    for image_id in sorted(images, key=int):
        split = "train" if is_train[image_id].strip() == "1" else "test"
        out[split][0].append(folder / "images" / images[image_id].strip())
        out[split][1].append(int(classes[image_id]) - 1)
    return out


def _train_val_files(folder: Path) -> dict[str, tuple[list[Path], list[int]]]:
    if not (folder / "train").is_dir() or not (folder / "val").is_dir():
        raise CatalogError(f"{folder} needs train/<class>/ and val/<class>/ folders")
    classes = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    out = {}
    for split, sub in (("train", "train"), ("test", "val")):
        files, labels = [], []
        for index, name in enumerate(classes):
            for path in sorted((folder / sub / name).glob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(path)
                    labels.append(index)
        out[split] = (files, labels)
    return out


def balanced_subset(labels: list[int], total: int, num_classes: int, seed: int = 0) -> list[int]:
    """Indices of a seeded subset with `total // num_classes` samples per class (fewer if a class has fewer)."""
    rng = np.random.default_rng(seed)
    per_class = max(1, total // num_classes)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    keep = []
    for label in sorted(by_class):
        members = by_class[label]
        chosen = rng.choice(len(members), size=min(per_class, len(members)), replace=False)
        keep.extend(members[i] for i in sorted(chosen))
    return keep


def _decode(files: list[Path], entry: DatasetEntry) -> torch.Tensor:
    from PIL import Image

    _, height, width = entry.input_size
    resize = entry.raw.get("resize", max(height, width))
    out = torch.empty(len(files), 3, height, width, dtype=torch.uint8)
    for i, path in enumerate(files):
        with Image.open(path) as img:
            img = img.convert("RGB")
            scale = resize / min(img.size)
            img = img.resize((max(width, round(img.size[0] * scale)), max(height, round(img.size[1] * scale))),
                             Image.Resampling.BILINEAR)
            left, top = (img.size[0] - width) // 2, (img.size[1] - height) // 2
            crop = img.crop((left, top, left + width, top + height))
            out[i] = torch.from_numpy(np.array(crop)).permute(2, 0, 1)
    return out
