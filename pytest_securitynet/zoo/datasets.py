"""Dataset loading: every catalogued dataset becomes uint8 image tensors [N, C, H, W] plus labels.

The resolver says which raw files a dataset needs and which decoder reads them; the store finds
them. Decoded tensors are cached (`<cache>/datasets/<id>-<key>.pt`), so a dataset is decoded once per
machine. The key covers everything the pixels depend on: the raw files' checksums, the entry's
decoding settings and `DECODER_VERSION`, so a changed source is decoded again rather than served from
an old cache file. A damaged cache file is decoded again with a warning; reading a cached dataset
takes no lock and writes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import torch

from pytest_securitynet.catalog.entries import DatasetEntry
from pytest_securitynet.errors import CatalogError, UnreadableFileError, UnsafeCheckpointError
from pytest_securitynet.zoo.checkpoints import first_line, safe_load
from pytest_securitynet.zoo.datasets_extra import decode_image_folder, decode_medmnist
from pytest_securitynet.zoo.resolver import fetch, resolve_dataset
from pytest_securitynet.zoo.store import FileStore, link_into, unpack_archive

log = logging.getLogger(__name__)

DECODER_VERSION = 1  # raise when a decoder's output changes: every cached dataset is decoded again
_SPLITS = ("train_images", "train_labels", "test_images", "test_labels")
_NOT_DECODED = ("description", "topic_category", "variant_of")  # entry fields the pixels do not depend on


@dataclass
class ImageData:
    """A dataset's two splits as uint8 images [N, C, H, W] and int64 labels [N]."""

    dataset_id: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name == "train":
            return self.train_images, self.train_labels
        if name == "test":
            return self.test_images, self.test_labels
        raise ValueError(f"unknown split {name!r}; use 'train' or 'test'")


def load_dataset(entry: DatasetEntry, store: FileStore) -> ImageData:
    """Load `entry` from the decoded-tensor cache, decoding it from its source on first use (or when
    the cached file is damaged: then with a warning)."""
    cached = decoded_path(entry, store)
    tensors, _ = _read_decoded(cached, entry)
    if tensors is None:
        with store.lock("datasets", entry.id):
            tensors, damaged = _read_decoded(cached, entry)  # written by another process meanwhile?
            if tensors is None:
                if damaged is not None:
                    warnings.warn(f"{damaged} Decoding dataset {entry.id!r} again from its source.",
                                  UserWarning, stacklevel=2)
                tensors = _decode_into(cached, entry, store)
    data = ImageData(entry.id, *(tensors[k] for k in _SPLITS))
    _check_shape(entry, data)
    return data


def decoded_path(entry: DatasetEntry, store: FileStore) -> Path:
    """Where a dataset's decoded tensors are cached; once there, its raw files are not needed."""
    return store.cache_dir / "datasets" / f"{entry.id}-{decoded_key(entry)}.pt"


def decoded_key(entry: DatasetEntry) -> str:
    """A digest of what the decoded pixels depend on: the decoder and its version, the raw files
    (names, checksums, URLs) and the entry's decoding settings."""
    plan = resolve_dataset(entry)
    files = [{"name": n.name, "sha256": n.sha256, "urls": list(n.urls), "folder": n.folder,
              "digest": [n.digest.algorithm, n.digest.hexdigest] if n.digest else None,
              "archive": [n.archive.name, n.archive.sha256] if n.archive else None} for n in plan.needs]
    settings = {k: v for k, v in entry.raw.items() if k not in _NOT_DECODED}
    doc = {"version": DECODER_VERSION, "loader": plan.loader, "files": files, "settings": settings}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_decoded(path: Path, entry: DatasetEntry) -> tuple[dict[str, torch.Tensor] | None, Exception | None]:
    """The cached tensors (None when absent or damaged) and, when damaged, the error saying so."""
    if not path.is_file():
        return None, None
    what = f"decoded tensors of dataset {entry.id}"
    try:
        tensors = safe_load(path, what, advice="")
    except (UnreadableFileError, UnsafeCheckpointError) as exc:
        return None, exc
    if not isinstance(tensors, dict) or not all(isinstance(tensors.get(k), torch.Tensor) for k in _SPLITS):
        return None, UnreadableFileError(f"cannot read {path} ({what}): it does not hold the tensors {', '.join(_SPLITS)}.")
    return tensors, None


def _decode_into(cached: Path, entry: DatasetEntry, store: FileStore) -> dict[str, torch.Tensor]:
    """Decode `entry` from its raw files and save the tensors at `cached`, dropping older decodings."""
    plan = resolve_dataset(entry)
    files = fetch(plan, store)
    log.info("decoding dataset %s (once; cached at %s)", entry.id, cached)
    tensors = _DECODERS[plan.loader](entry, files)
    store.replace_version(store.path("datasets", cached.name), lambda tmp: torch.save(tensors, tmp),
                          re.compile(rf"{re.escape(entry.id)}(-[0-9a-f]{{16}})?\.pt"))
    return tensors


def _check_shape(entry: DatasetEntry, data: ImageData) -> None:
    expected = {"train": entry.train_size, "test": entry.test_size}
    for split, size in expected.items():
        images, labels = data.split(split)
        if len(images) != size or len(labels) != size or tuple(images.shape[1:]) != entry.input_size:
            raise CatalogError(
                f"{entry.origin}: dataset {entry.id!r}: the {split} split loaded as {tuple(images.shape)} "
                f"but the catalog says {size} images of {entry.input_size}"
            )


def _from_sklearn_digits(entry: DatasetEntry, files: list[Path]) -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16; rescale to the 0..255 range every other dataset uses.
    images = torch.from_numpy(np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(entry.raw.get("split_seed", 0)).permutation(len(labels)))
    n_train = int(len(labels) * (1 - entry.raw.get("test_fraction", 0.5)))
    train, test = order[:n_train], order[n_train:]
    return _pack(images[train], labels[train], images[test], labels[test])


def _from_image_archive(entry: DatasetEntry, files: list[Path]) -> dict[str, torch.Tensor]:
    """A tarball of `<archive_root>/<split>/<class>/<image>` files."""
    archive = files[0]
    root = PurePosixPath(entry.raw["archive_root"])
    classes = entry.raw.get("class_names")
    found: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    last = "(its start)"
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                place = _archive_place(member, root)
                if place is not None and place[0] in found:
                    found[place[0]].append((place[1], place[2], tar.extractfile(member).read()))
                last = member.name
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise CatalogError(f"dataset {entry.id!r}: the archive {archive} is truncated or damaged after member "
                           f"{last} ({first_line(exc)}); replace it with a whole copy") from None
    class_names = classes or sorted({c for c, _, _ in found["train"]})
    out = {}
    for split, items in found.items():
        items.sort(key=lambda item: (item[0], item[1]))
        unknown = {c for c, _, _ in items} - set(class_names)
        if unknown:
            raise CatalogError(f"{entry.origin}: dataset {entry.id!r}: archive has unknown class folders {sorted(unknown)}")
        arrays = [_archive_image(entry, archive, f"{root}/{split}/{label}/{name}", blob) for label, name, blob in items]
        out[f"{split}_images"] = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        out[f"{split}_labels"] = torch.tensor([class_names.index(c) for c, _, _ in items], dtype=torch.int64)
    return out


def _archive_image(entry: DatasetEntry, archive: Path, member: str, blob: bytes) -> np.ndarray:
    """One image of an image-folder archive as RGB pixels [H, W, 3]; `CatalogError` naming the archive
    and the member when it is not an image or not of the catalogued size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise CatalogError(f"dataset {entry.id!r}: {member} in the archive {archive} is not a readable image "
                           f"({first_line(exc)})") from None
    expected = tuple(entry.input_size[-2:])
    if pixels.shape[:2] != expected:
        raise CatalogError(f"dataset {entry.id!r}: {member} in the archive {archive} is "
                           f"{pixels.shape[1]}x{pixels.shape[0]} pixels, not the catalogued "
                           f"{expected[1]}x{expected[0]}")
    return pixels


def _archive_place(member: tarfile.TarInfo, root: PurePosixPath) -> tuple[str, str, str] | None:
    """(split, class folder, file name) of an image in an image-folder archive, or None for anything else."""
    path = PurePosixPath(member.name)
    if not member.isfile() or len(path.parts) != len(root.parts) + 3 or path.parts[: len(root.parts)] != root.parts:
        return None
    split, label_name, file_name = path.parts[len(root.parts):]
    return split, label_name, file_name


def archive_split_names(entry: DatasetEntry, store: FileStore, split: str = "train") -> list[str]:
    """`<class>/<file>` of every image of an image-folder archive's split, in the order the split loads in.

    Reads the archive's index only (no image is decoded), so a sample's position here is its index.
    """
    archive = fetch(resolve_dataset(entry), store)[0]
    root = PurePosixPath(entry.raw["archive_root"])
    try:
        with tarfile.open(archive, "r:*") as tar:
            places = [place for place in map(lambda m: _archive_place(m, root), tar) if place and place[0] == split]
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise CatalogError(f"dataset {entry.id!r}: the archive {archive} is truncated or damaged "
                           f"({first_line(exc)}); replace it with a whole copy") from None
    return [f"{label}/{name}" for _, label, name in sorted(places, key=lambda place: (place[1], place[2]))]


def _from_torchvision(entry: DatasetEntry, files: list[Path]) -> dict[str, torch.Tensor]:
    """torchvision's class reading its files from a scratch folder: archives unpacked, other files linked."""
    import torchvision

    cls = getattr(torchvision.datasets, entry.raw["torchvision_class"])
    splits = {}
    with tempfile.TemporaryDirectory(prefix="securitynet-torchvision-") as tmp:
        root = Path(tmp)
        for path in files:
            if path.name.endswith((".tar.gz", ".tgz", ".tar", ".zip")):
                unpack_archive(path, root)
            else:
                link_into(path, root)
        for split in ("train", "test"):
            try:
                ds = _torchvision_split(cls, root, split)
            except (RuntimeError, OSError) as exc:
                names = ", ".join(str(p) for p in files)
                raise CatalogError(f"dataset {entry.id!r}: {cls.__name__} could not read {names}: {exc}") from exc
            labels = getattr(ds, "targets", getattr(ds, "labels", None))
            splits[split] = (_to_nchw(ds.data), torch.as_tensor(np.asarray(labels), dtype=torch.int64))
    return _pack(*splits["train"], *splits["test"])


def _torchvision_split(cls, root: Path, split: str):
    try:
        return cls(root=str(root), train=(split == "train"), download=False)
    except TypeError:
        return cls(root=str(root), split=split, download=False)


def _to_nchw(data) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(data), dtype=torch.uint8)
    if tensor.ndim == 3:
        return tensor.unsqueeze(1)
    if tensor.shape[-1] in (1, 3):
        return tensor.permute(0, 3, 1, 2).contiguous()
    return tensor


def _pack(train_images, train_labels, test_images, test_labels) -> dict[str, torch.Tensor]:
    return {"train_images": train_images, "train_labels": train_labels,
            "test_images": test_images, "test_labels": test_labels}


_DECODERS: dict[str, Callable[[DatasetEntry, list[Path]], dict[str, torch.Tensor]]] = {
    "sklearn-digits": _from_sklearn_digits,
    "image-folder-archive": _from_image_archive,
    "torchvision": _from_torchvision,
    "medmnist": decode_medmnist,
    "image-folder": decode_image_folder,
}
